// Open a bundle safely (translation of runtime/bundle.py open_bundle, for the files a phone uses):
// 1. read manifest.json (refuse a bundle without one: no guessing the config from file names);
// 2. parse and validate it (versions, fields);
// 3. hash every file the app will use and compare with the manifest;
// 4. only then hand the verified BYTES to the interpreters (a file swapped afterwards is never run).
// Plain JVM (java.security), so it compiles here; android/AssetBundleFiles.kt reads from assets.
package glassfinder.core

import java.io.File
import java.security.MessageDigest

/** Where the bundle's files come from (a folder, the APK's assets, a download cache...). */
interface BundleFiles {
    /** The bytes of `path` (relative, '/' separators); throw BundleException if it is missing. */
    fun read(path: String): ByteArray

    /** Human-readable location for messages. */
    val location: String
}

class DirectoryBundleFiles(private val root: File) : BundleFiles {
    override val location: String get() = root.path

    override fun read(path: String): ByteArray {
        val f = File(root, path)
        // A listed path must stay inside the bundle folder (manifest.py _check_relpath).
        if (!f.canonicalPath.startsWith(root.canonicalPath + File.separator)) throw BundleException("${f.path}: points outside the bundle folder")
        if (!f.isFile) throw BundleException("${f.path}: missing file (listed in $MANIFEST_NAME)")
        return f.readBytes()
    }
}

fun sha256Hex(data: ByteArray): String =
    MessageDigest.getInstance("SHA-256").digest(data).joinToString("") { String.format("%02x", it.toInt() and 0xFF) }

/** A verified bundle: the manifest and the hash-checked bytes of the files the phone pipeline uses. */
class VerifiedBundle(val manifest: Manifest, val tfliteModels: Map<String, ByteArray>, val gallery: Gallery?, val skuBytes: ByteArray?)

/** Read, validate and hash-check a bundle. Every problem throws BundleException naming the file. */
fun openBundle(files: BundleFiles): VerifiedBundle {
    val manifestBytes = try { files.read(MANIFEST_NAME) } catch (e: BundleException) {
        throw BundleException("${files.location}: not a bundle: there is no $MANIFEST_NAME (export writes it last; an interrupted export leaves none)")
    }
    val manifest = Manifest.parse(String(manifestBytes, Charsets.UTF_8), "${files.location}/$MANIFEST_NAME")

    fun verified(path: String, sha256: String): ByteArray {
        val bytes = files.read(path)
        val actual = sha256Hex(bytes)
        if (actual != sha256) {
            throw BundleException("${files.location}/$path: sha256 mismatch (manifest ${sha256.take(16)}..., file ${actual.take(16)}...): the file was changed or damaged after export")
        }
        return bytes
    }

    val models = LinkedHashMap<String, ByteArray>()
    for (m in manifest.models) if (m.format == "tflite") models[m.name] = verified(m.file, m.sha256)
    val g = manifest.gallery
    val gallery = g?.let {
        val gal = try { galleryFromBytes(verified(it.file, it.sha256)) } catch (e: GalleryException) {
            throw GalleryException("${files.location}/${it.file}: ${e.message}")
        }
        if (gal.spec.toString() != it.spec.toString() || gal.d != it.d || gal.n.toLong() != it.n) {
            throw BundleException("${files.location}/${it.file}: the gallery is ${gal.spec} d=${gal.d} n=${gal.n}, the manifest says ${it.spec} d=${it.d} n=${it.n}")
        }
        gal
    }
    val skus = g?.let { verified(it.skuFile, it.skuSha256) }
    return VerifiedBundle(manifest, models, gallery, skus)
}

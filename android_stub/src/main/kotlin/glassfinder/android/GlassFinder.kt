// ANDROID-ONLY (android.*, org.tensorflow.lite): NOT compiled by tests/stubs/test_kotlin_golden.py.
//
// The public API of runtime/pipeline.py (MediaPipe task style), same names:
//
//     val finder = GlassFinder.createFromBundle(context, SearchOptions(topK = 10))  // assets/glassfinder/
//     val result = finder.search(bitmap)          // on a worker thread, never the main thread
//     if (result.status == "ok") show(result.results[0].name) else show(result.message)
//     finder.close()
//
// Every numeric step is a glassfinder.core function checked against the runtime's golden vectors;
// this file only moves data between Bitmap, the TFLite Interpreter and the core.
package glassfinder.android

import android.content.Context
import android.graphics.Bitmap
import glassfinder.core.BundleException
import glassfinder.core.BundleFiles
import glassfinder.core.DetectorFn
import glassfinder.core.DirectoryBundleFiles
import glassfinder.core.Gallery
import glassfinder.core.ImageLimits
import glassfinder.core.Manifest
import glassfinder.core.ModelFn
import glassfinder.core.RgbImage
import glassfinder.core.SearchOptions
import glassfinder.core.SearchResult
import glassfinder.core.SkuHit
import glassfinder.core.alignCrop
import glassfinder.core.findFace
import glassfinder.core.gate
import glassfinder.core.generateAnchors
import glassfinder.core.glassesKeypoints
import glassfinder.core.l2Normalize
import glassfinder.core.openBundle
import glassfinder.core.pqSearch
import glassfinder.core.readSkuMetadata
import glassfinder.core.refusal
import java.io.Closeable
import java.io.File

/**
 * The whole on-device search over one verified bundle. NOT thread-safe: a TFLite Interpreter must
 * not be used by two threads at once. Use one GlassFinder per worker thread (or serialise calls on
 * one single-thread executor), and never call search() on the main thread.
 */
class GlassFinder private constructor(private val manifest: Manifest, private val options: SearchOptions,
                                      private val models: Map<String, TfliteModel>, private val gallery: Gallery,
                                      private val skus: List<SkuHit>) : Closeable {
    private val detector = manifest.detector!!
    private val aligner = manifest.aligner!!
    private val gateSettings = manifest.gate!!
    private val embedder = manifest.embedder!!
    private val anchors = generateAnchors(detector.anchors)  // once, as the runtime does
    private var closed = false

    companion object {
        /** Open and verify the bundle in the APK's assets (manifest first, every sha256 checked). */
        fun createFromBundle(context: Context, options: SearchOptions = SearchOptions(), assetDir: String = "glassfinder"): GlassFinder =
            createFromBundle(AssetBundleFiles(context.assets, assetDir), options)

        /** Same, from a folder on disk (e.g. a bundle downloaded after install). */
        fun createFromBundle(dir: File, options: SearchOptions = SearchOptions()): GlassFinder =
            createFromBundle(DirectoryBundleFiles(dir), options)

        fun createFromBundle(files: BundleFiles, options: SearchOptions): GlassFinder {
            val bundle = openBundle(files)
            val m = bundle.manifest
            val missing = listOf("detector" to m.detector, "aligner" to m.aligner, "gate" to m.gate,
                "embedder" to m.embedder, "gallery" to m.gallery).filter { it.second == null }.map { it.first }
            if (missing.isNotEmpty()) throw BundleException("${files.location}: the bundle has no ${missing.joinToString(", ")} section: it cannot run a search")
            val gallery = bundle.gallery!!
            val skus = readSkuMetadata(String(bundle.skuBytes!!, Charsets.UTF_8), gallery.n, "${files.location}/${m.gallery!!.skuFile}")
            val models = LinkedHashMap<String, TfliteModel>()
            try {
                for (role in listOf("detector", "aligner", "gate", "embedder")) {
                    models[role] = TfliteModel(m.model(role, "tflite"), bundle.tfliteModels.getValue(role), options.numThreads)
                }
            } catch (e: Exception) {
                models.values.forEach { it.close() }
                throw e
            }
            return GlassFinder(m, options, models, gallery, skus)
        }
    }

    private fun run(role: String, pixels: RgbImage): List<FloatArray> {
        val model = models.getValue(role)
        return model.run(inputBuffer(pixels, model.entry.input, model.inputScale, model.inputZeroPoint))
    }

    /** pipeline.ModelFn of the aligner: the face crop's pixels -> [raw landmarks, face flag]. */
    private val runAligner: ModelFn = { crop -> run("aligner", crop) }

    /** photo -> detector -> aligner -> crop -> gate -> embedder -> PQ search (pipeline.GlassFinder.search).
     * Call off the main thread. */
    fun search(photo: Bitmap): SearchResult {
        if (closed) throw IllegalStateException("GlassFinder is closed")
        ImageLimits().check(photo.width, photo.height, "photo")  // image_io's size policy: too small, banner-shaped
        val image = photo.toRgbImage()

        // 1-2. detector (whole photo, then tiles) and aligner over the candidates (pipeline.find_face).
        // The detector letterboxes a region of the Bitmap: createScaledBitmap is the platform resampler.
        val size = detector.anchors.inputSize
        val runDetector: DetectorFn = { region, lb ->
            val part = if (region.x0 == 0 && region.y0 == 0 && region.width == photo.width && region.height == photo.height) photo
                       else Bitmap.createBitmap(photo, region.x0, region.y0, region.width, region.height)
            try {
                run("detector", letterboxPixels(part, lb, size))
            } finally {
                if (part !== photo) part.recycle()
            }
        }
        val found = findFace(image, runDetector, runAligner, detector, anchors, aligner.mesh, options.face)
        val faces = found.detections
        val mesh = found.mesh
        if (found.index < 0 || mesh == null) return rejected("no_face", faces.size, emptyMap())

        // 3. crop: similarity of the five glasses keypoints onto the template
        val kps = glassesKeypoints(mesh, aligner.mesh)
        val crop = alignCrop(image, DoubleArray(kps.size) { kps[it].toDouble() }, aligner.template).crop

        // 4. gate (GlassFinder.gate_crop): gateDecision = softmax, P(glasses) of the accept classes vs the threshold
        val decision = gate(run("gate", crop)[0], gateSettings)
        if (!decision.accepted) return rejected("no_glasses", faces.size, decision.probabilities)

        // 5. embedder (+ L2 norm outside the int8 graph) and 6. PQ search
        var emb = run("embedder", crop)[0]
        if (embedder.l2Normalize) emb = l2Normalize(emb, embedder.dim)
        val res = pqSearch(gallery, emb, options.topK)
        // The gallery ids are rows of the SKU list (pipeline.search uses them as indices).
        val hits = (0 until res.k).filter { res.I[it] >= 0 }.map {
            val row = res.I[it].toInt()
            SkuHit(skus[row].sku, skus[row].name, res.D[it], row)
        }
        return SearchResult("ok", "", null, faces.size, decision.probabilities, hits)
    }

    private fun rejected(reason: String, faces: Int, probs: Map<String, Float>) =
        SearchResult("rejected", refusal(gateSettings, reason), reason, faces, probs, emptyList())

    override fun close() {
        if (!closed) {
            closed = true
            models.values.forEach { it.close() }
        }
    }
}

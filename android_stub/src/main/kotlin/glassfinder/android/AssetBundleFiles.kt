// ANDROID-ONLY (needs the Android SDK): NOT compiled by tests/stubs/test_kotlin_golden.py.
// Reads the bundle from the APK's assets folder (app/src/main/assets/<dir>/manifest.json ...).
package glassfinder.android

import android.content.res.AssetManager
import glassfinder.core.BundleException
import glassfinder.core.BundleFiles
import java.io.FileNotFoundException

class AssetBundleFiles(private val assets: AssetManager, private val dir: String) : BundleFiles {
    override val location: String get() = "assets/$dir"

    override fun read(path: String): ByteArray = try {
        assets.open("$dir/$path").use { it.readBytes() }
    } catch (e: FileNotFoundException) {
        throw BundleException("$location/$path: missing file (listed in manifest.json)")
    }
}

// User-facing errors, the same classes as runtime/errors.py: every mistake a user can make (a bad
// image, a tampered bundle, a wrong option) throws a subclass whose message names the file and
// the problem. The app shows the message; it is not a crash.
package glassfinder.core

open class GlassfinderException(message: String) : Exception(message)

/** An input image cannot be used (python: ImageError). */
class ImageException(message: String) : GlassfinderException(message)

/** A bundle or one of its files is missing, tampered with or of the wrong version (python: BundleError). */
open class BundleException(message: String) : GlassfinderException(message)

/** A PQ gallery file is malformed (python: GalleryError). */
class GalleryException(message: String) : BundleException(message)

/** Options that cannot be honoured together (python: ConfigError). */
class ConfigException(message: String) : GlassfinderException(message)

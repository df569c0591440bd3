// User-facing errors, the same classes as runtime/errors.py: a message naming the file and the problem.
import Foundation

public enum GlassfinderError: Error, CustomStringConvertible, Equatable {
    case image(String)    // ImageError: an input image cannot be used
    case bundle(String)   // BundleError: a bundle file is missing, tampered with, of a wrong version
    case gallery(String)  // GalleryError: a malformed PQ gallery file
    case config(String)   // ConfigError: options that cannot be honoured together

    public var description: String {
        switch self {
        case .image(let m), .bundle(let m), .gallery(let m), .config(let m): return m
        }
    }
}

// Open a bundle safely (runtime/bundle.py open_bundle for the files the phone uses): read
// manifest.json first, validate it, check the sha256 of every file used, and only then hand the
// verified bytes on. Core ML compiles .mlpackage folders, so those are hashed as
// runtime/bundle.py sha256_path does for folders: sha256 over "relative/path\0<sha256 of file>\n"
// lines in sorted path order.
import Foundation
#if canImport(CryptoKit)
import CryptoKit
#endif

public func sha256Hex(_ data: [UInt8]) -> String {
    #if canImport(CryptoKit)
    return SHA256.hash(data: Data(data)).map { String(format: "%02x", $0) }.joined()
    #else
    return SHA256Fallback.hash(data).map { String(format: "%02x", $0) }.joined()
    #endif
}

/// sha256 of a file, or of a folder (an .mlpackage) as runtime/bundle.py sha256_path hashes it.
public func sha256Path(_ url: URL) throws -> String {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir) else { throw GlassfinderError.bundle("\(url.path): missing file (listed in \(manifestName))") }
    if !isDir.boolValue { return sha256Hex([UInt8](try Data(contentsOf: url))) }
    let root = url.standardizedFileURL.path
    var entries: [(String, String)] = []
    if let e = FileManager.default.enumerator(at: url, includingPropertiesForKeys: [.isRegularFileKey, .isSymbolicLinkKey]) {
        for case let f as URL in e {
            let values = try f.resourceValues(forKeys: [.isRegularFileKey, .isSymbolicLinkKey])
            if values.isSymbolicLink == true { throw GlassfinderError.bundle("\(f.path): symbolic links are not allowed in a bundle") }
            if values.isRegularFile == true {
                let rel = String(f.standardizedFileURL.path.dropFirst(root.count + 1))
                entries.append((rel, sha256Hex([UInt8](try Data(contentsOf: f)))))
            }
        }
    }
    // Python sorts by the POSIX relative path string (code point order).
    let lines = entries.sorted { a, b in a.0.unicodeScalars.map { $0.value }.lexicographicallyPrecedes(b.0.unicodeScalars.map { $0.value }) }
        .map { "\($0.0)\u{0}\($0.1)\n" }.joined()
    return sha256Hex(Array(lines.utf8))
}

/// A verified bundle: the manifest, the folder, and the hash-checked gallery.
public struct VerifiedBundle { public let root: URL; public let manifest: Manifest; public let gallery: Gallery?; public let skuBytes: [UInt8]? }

/// Read, validate and hash-check a bundle folder (e.g. Bundle.main.url(forResource: "glassfinder", withExtension: nil)).
public func openBundle(_ root: URL, format: String = "mlpackage") throws -> VerifiedBundle {
    let manifestURL = root.appendingPathComponent(manifestName)
    guard let manifestData = FileManager.default.contents(atPath: manifestURL.path) else {
        throw GlassfinderError.bundle("\(root.path): not a bundle: there is no \(manifestName) (export writes it last; an interrupted export leaves none)")
    }
    guard let text = String(data: manifestData, encoding: .utf8) else { throw GlassfinderError.bundle("\(manifestURL.path): not UTF-8 text") }
    let manifest = try Manifest.parse(text, source: manifestURL.path)
    func check(_ file: String, _ sha: String) throws {
        let actual = try sha256Path(root.appendingPathComponent(file))
        guard actual == sha else {
            throw GlassfinderError.bundle("\(root.appendingPathComponent(file).path): sha256 mismatch (manifest \(sha.prefix(16))..., file \(actual.prefix(16))...): the file was changed or damaged after export")
        }
    }
    for m in manifest.models where m.format == format { try check(m.file, m.sha256) }
    var gallery: Gallery? = nil, skus: [UInt8]? = nil
    if let g = manifest.gallery {
        try check(g.file, g.sha256)
        try check(g.skuFile, g.skuSha256)
        let bytes = [UInt8](try Data(contentsOf: root.appendingPathComponent(g.file)))
        do { gallery = try galleryFromBytes(bytes) } catch let GlassfinderError.gallery(m) { throw GlassfinderError.gallery("\(root.appendingPathComponent(g.file).path): \(m)") }
        guard gallery!.spec == g.spec, gallery!.d == g.d, Int64(gallery!.n) == g.n else {
            throw GlassfinderError.bundle("\(g.file): the gallery file disagrees with the manifest (\(gallery!.spec) d=\(gallery!.d) n=\(gallery!.n))")
        }
        skus = [UInt8](try Data(contentsOf: root.appendingPathComponent(g.skuFile)))
    }
    return VerifiedBundle(root: root, manifest: manifest, gallery: gallery, skuBytes: skus)
}

#if !canImport(CryptoKit)
/// FIPS 180-4 SHA-256 for platforms without CryptoKit (Linux builds of the numeric core).
enum SHA256Fallback {
    static let k: [UInt32] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2]

    static func hash(_ message: [UInt8]) -> [UInt8] {
        var h: [UInt32] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]
        var data = message
        let bitLength = UInt64(message.count) * 8
        data.append(0x80)
        while data.count % 64 != 56 { data.append(0) }
        for i in (0..<8).reversed() { data.append(UInt8((bitLength >> (8 * UInt64(i))) & 0xff)) }
        func rotr(_ x: UInt32, _ n: UInt32) -> UInt32 { (x >> n) | (x << (32 - n)) }
        for chunk in stride(from: 0, to: data.count, by: 64) {
            var w = [UInt32](repeating: 0, count: 64)
            for t in 0..<16 { w[t] = (0..<4).reduce(UInt32(0)) { ($0 << 8) | UInt32(data[chunk + 4 * t + $1]) } }
            for t in 16..<64 {
                let s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3)
                let s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10)
                w[t] = w[t - 16] &+ s0 &+ w[t - 7] &+ s1
            }
            var (a, b, c, d, e, f, g, hh) = (h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7])
            for t in 0..<64 {
                let t1 = hh &+ (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) &+ ((e & f) ^ (~e & g)) &+ k[t] &+ w[t]
                let t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) &+ ((a & b) ^ (a & c) ^ (b & c))
                (hh, g, f, e, d, c, b, a) = (g, f, e, d &+ t1, c, b, a, t1 &+ t2)
            }
            for (i, v) in [a, b, c, d, e, f, g, hh].enumerated() { h[i] = h[i] &+ v }
        }
        return h.flatMap { v in (0..<4).map { UInt8((v >> (24 - 8 * UInt32($0))) & 0xff) } }
    }
}
#endif

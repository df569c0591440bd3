// PQ gallery: spec, .gfpq reader, ADC search. Translation of runtime/gallery.py (docs/gallery_format.md).
// Contract (faiss's): D (nq, k) Float and I (nq, k) ids, best first; IP descending, L2 ascending;
// -1 / -inf (IP) / +inf (L2) padding when k > n; ties go to the lower gallery position.
// Accelerate (vDSP) computes the lookup tables where available; the sums over sub-quantizers stay
// in plain Float, in sub-quantizer order, as in Python (that order decides exact ties).
// Refine(SQ8): the top max(k, shortlist) ADC rows are re-scored with per-dimension int8 codes
// (xHat_ij = scale_j * code_ij, unrotated space) and the best k of them are returned.
import Foundation
#if canImport(Accelerate)
import Accelerate
#endif

public enum Metric: Int { case ip = 0, l2 = 1 }

/// gallery.REFINE_KINDS, SQ8_MAX, DEFAULT_SHORTLIST
public let refineKinds = ["SQ8"]
public let sq8Max = 127
public let defaultShortlist = 64

/// gallery.PQSpec (refine: nil or "SQ8")
public struct PQSpec: CustomStringConvertible, Equatable {
    public let M: Int, nbits: Int, metric: Metric, opq: Bool, refine: String?

    public init(M: Int, nbits: Int, metric: Metric, opq: Bool = false, refine: String? = nil) throws {
        guard M >= 1 else { throw GlassfinderError.gallery("PQ spec needs M >= 1 sub-quantizers, got M=\(M)") }
        guard (4...8).contains(nbits) else { throw GlassfinderError.gallery("PQ spec nbits=\(nbits) is not supported: nbits must be in 4..8") }
        if let r = refine, !refineKinds.contains(r) { throw GlassfinderError.gallery("PQ spec refine kind '\(r)' is not supported: use Refine(SQ8) or no refine") }
        self.M = M; self.nbits = nbits; self.metric = metric; self.opq = opq; self.refine = refine
    }

    public var ksub: Int { 1 << nbits }
    /// PQ code bytes per vector (the manifest's code_size).
    public var codeSize: Int { M }
    /// Refine code bytes per vector of dimension d (SQ8: one per dimension).
    public func refineCodeSize(_ d: Int) -> Int { refine == "SQ8" ? d : 0 }
    public var description: String {
        (opq ? "OPQ\(M)," : "") + "PQ\(M)x\(nbits),\(metric == .ip ? "IP" : "L2")" + (refine.map { ",Refine(\($0))" } ?? "")
    }

    public func dsub(_ d: Int) throws -> Int {
        guard d >= 1, d % M == 0 else { throw GlassfinderError.gallery("PQ spec \(self): M=\(M) must divide the vector dimension d=\(d)") }
        return d / M
    }
}

/// gallery.parse_spec: "PQ16x8,IP" / "OPQ16,PQ16x8,IP,Refine(SQ8)" (the Python regex, spelled out).
public func parseSpec(_ text: String) throws -> PQSpec {
    func number(_ s: Substring) -> Int? { !s.isEmpty && s.allSatisfy({ $0.isASCII && $0.isNumber }) ? Int(s) : nil }
    let bad = GlassfinderError.gallery("PQ spec '\(text)' is invalid: write it as [OPQ<M>,]PQ<M>x<nbits>,<metric>[,Refine(SQ8)], e.g. 'PQ16x8,IP'")
    var parts = text.trimmingCharacters(in: .whitespaces).split(separator: ",", omittingEmptySubsequences: false)
    // Optional last part "Refine(<kind>)", <kind> without parentheses (the regex's [^()]*).
    var refine: String? = nil
    if let last = parts.last, last.hasPrefix("Refine") {
        guard last.hasPrefix("Refine("), last.hasSuffix(")"), last.count >= 8 else { throw bad }
        let kind = last.dropFirst(7).dropLast()
        guard !kind.contains("("), !kind.contains(")") else { throw bad }
        refine = String(kind)
        parts.removeLast()
    }
    guard parts.count == 2 || parts.count == 3 else { throw bad }
    var opqM: Int? = nil
    if parts.count == 3 {
        guard parts[0].hasPrefix("OPQ"), let m = number(parts[0].dropFirst(3)) else { throw bad }
        opqM = m
    }
    let pq = parts[parts.count - 2]
    let mn = pq.dropFirst(2).split(separator: "x", omittingEmptySubsequences: false)
    guard pq.hasPrefix("PQ"), mn.count == 2, let M = number(mn[0]), let nbits = number(mn[1]) else { throw bad }
    let metricText = String(parts[parts.count - 1])
    guard let metric = ["IP": Metric.ip, "L2": Metric.l2][metricText] else {
        throw GlassfinderError.gallery("PQ spec '\(text)': unknown metric '\(metricText)', use IP or L2")
    }
    if let r = refine, !refineKinds.contains(r) {
        throw GlassfinderError.gallery("PQ spec '\(text)': unknown refine kind '\(r)', supported: Refine(SQ8)")
    }
    if let o = opqM, o != M { throw GlassfinderError.gallery("PQ spec '\(text)': OPQ\(o) must match the PQ's M=\(M)") }
    return try PQSpec(M: M, nbits: nbits, metric: metric, opq: opqM != nil, refine: refine)
}

/// gallery.Gallery: codebooks (M, ksub, dsub), codes (n, M), ids (n,), rotation (d, d) or nil;
/// with Refine(SQ8): refineScales (d,) > 0, refineCodes (n, d) in -127...127, shortlist >= 1.
public struct Gallery {
    public let spec: PQSpec, d: Int, dsub: Int
    public let codebooks: [Float], codes: [UInt8], ids: [Int64], rotation: [Float]?
    public let refineScales: [Float]?, refineCodes: [Int8]?, shortlist: Int
    public var n: Int { ids.count }

    public init(spec: PQSpec, d: Int, codebooks: [Float], codes: [UInt8], ids: [Int64], rotation: [Float]? = nil,
                refineScales: [Float]? = nil, refineCodes: [Int8]? = nil, shortlist: Int = defaultShortlist) throws {
        let dsub = try spec.dsub(d)
        guard codebooks.count == spec.M * spec.ksub * dsub else { throw GlassfinderError.gallery("codebooks must have \(spec.M * spec.ksub * dsub) values") }
        guard codes.count == ids.count * spec.M else { throw GlassfinderError.gallery("\(ids.count) ids for \(codes.count / spec.M) codes") }
        guard spec.opq == (rotation != nil), rotation.map({ $0.count == d * d }) ?? true else { throw GlassfinderError.gallery("spec \(spec) and the OPQ rotation disagree") }
        guard ids.allSatisfy({ $0 >= 0 }), Set(ids).count == ids.count else { throw GlassfinderError.gallery("ids must be unique and >= 0") }
        guard spec.nbits == 8 || codes.allSatisfy({ Int($0) < spec.ksub }) else { throw GlassfinderError.gallery("codes out of range for nbits=\(spec.nbits)") }
        guard (spec.refine != nil) == (refineScales != nil && refineCodes != nil) else { throw GlassfinderError.gallery("spec \(spec) and the refine scales/codes disagree") }
        if let s = refineScales, let c = refineCodes {
            guard s.count == d, c.count == ids.count * d else { throw GlassfinderError.gallery("refine scales must be (\(d),) and codes (\(ids.count), \(d))") }
            guard s.allSatisfy({ $0.isFinite && $0 > 0 }) else { throw GlassfinderError.gallery("refine scales must be finite and > 0") }
            guard c.allSatisfy({ Int($0) >= -sq8Max }) else { throw GlassfinderError.gallery("refine codes out of range: SQ8 codes are -\(sq8Max)...\(sq8Max)") }
            guard shortlist >= 1 else { throw GlassfinderError.gallery("refine shortlist must be >= 1, got \(shortlist)") }
        }
        self.spec = spec; self.d = d; self.dsub = dsub
        self.codebooks = codebooks; self.codes = codes; self.ids = ids; self.rotation = rotation
        self.refineScales = refineScales; self.refineCodes = refineCodes; self.shortlist = shortlist
    }
}

public let gfpqHeaderSize = 64
public let gfpqReaderVersion = 2
let gfpqFlagOPQ: UInt32 = 1, gfpqFlagRefineSQ8: UInt32 = 2

/// IEEE CRC-32 (zlib's), for the .gfpq checksum.
public func crc32(_ data: [UInt8], count: Int) -> UInt32 {
    var table = [UInt32](repeating: 0, count: 256)
    for i in 0..<256 {
        var c = UInt32(i)
        for _ in 0..<8 { c = (c & 1) != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        table[i] = c
    }
    var crc: UInt32 = 0xFFFF_FFFF
    for i in 0..<count { crc = table[Int((crc ^ UInt32(data[i])) & 0xFF)] ^ (crc >> 8) }
    return crc ^ 0xFFFF_FFFF
}

/// gallery.gallery_from_bytes: parse and validate a .gfpq file, version 1 or 2 (little-endian).
public func galleryFromBytes(_ data: [UInt8]) throws -> Gallery {
    func u16(_ o: Int) -> Int { Int(data[o]) | Int(data[o + 1]) << 8 }
    func u32(_ o: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 | UInt32(data[o + $1]) << (8 * UInt32($1)) } }
    func u64(_ o: Int) -> UInt64 { (0..<8).reduce(UInt64(0)) { $0 | UInt64(data[o + $1]) << (8 * UInt64($1)) } }
    func f32(_ o: Int) -> Float { Float(bitPattern: u32(o)) }
    guard data.count >= 4, Array(data[0..<4]) == Array("GFPQ".utf8) else { throw GlassfinderError.gallery("bad magic: not a glassfinder PQ gallery (expected 'GFPQ')") }
    guard data.count >= gfpqHeaderSize else { throw GlassfinderError.gallery("truncated header: file is \(data.count) bytes") }
    let version = u16(4), minReader = u16(6), headerSize = Int(u32(8)), d = Int(u32(12)), M = Int(u32(16))
    let nbits = Int(u32(20)), metricCode = Int(u32(24)), flags = u32(28), n64 = u64(32)
    let shortlist = Int(u32(40))  // version 2, refine only (reserved bytes in version 1)
    guard minReader <= gfpqReaderVersion else { throw GlassfinderError.gallery("unsupported version: file version \(version) needs a reader of version >= \(minReader)") }
    guard headerSize == gfpqHeaderSize else { throw GlassfinderError.gallery("header size \(headerSize) is not \(gfpqHeaderSize)") }
    guard flags & ~(gfpqFlagOPQ | gfpqFlagRefineSQ8) == 0 else { throw GlassfinderError.gallery("unknown header flags \(flags)") }
    guard let metric = Metric(rawValue: metricCode) else { throw GlassfinderError.gallery("unknown metric code \(metricCode) in the header (0 = IP, 1 = L2)") }
    let refine: String? = flags & gfpqFlagRefineSQ8 != 0 ? "SQ8" : nil
    guard refine == nil || shortlist >= 1 else { throw GlassfinderError.gallery("refine shortlist \(shortlist) in the header is invalid: it must be >= 1") }
    let spec = try PQSpec(M: M, nbits: nbits, metric: metric, opq: flags & gfpqFlagOPQ != 0, refine: refine)
    let dsub = try spec.dsub(d)
    guard n64 < UInt64(Int32.max) / UInt64(max(8, M + spec.refineCodeSize(d))) else { throw GlassfinderError.gallery("n=\(n64) is too large for this reader") }
    let n = Int(n64)
    let cbBytes = M * spec.ksub * dsub * 4, rotBytes = spec.opq ? d * d * 4 : 0
    let codesOffset = gfpqHeaderSize + cbBytes + rotBytes, afterCodes = codesOffset + n * M
    let idsOffset = afterCodes + (8 - afterCodes % 8) % 8  // ids are 8-byte aligned
    let scalesOffset = idsOffset + n * 8  // version 2: refine scales (d,) f32, then codes (n, d) i8
    let refineOffset = scalesOffset + (refine != nil ? d * 4 : 0)
    let expected = refineOffset + n * spec.refineCodeSize(d) + 4
    guard data.count >= expected else { throw GlassfinderError.gallery("truncated: file is \(data.count) bytes, the header (d=\(d), \(spec), n=\(n)) needs \(expected)") }
    guard data.count == expected else { throw GlassfinderError.gallery("\(data.count - expected) unexpected trailing bytes after the checksum") }
    let stored = u32(expected - 4), actual = crc32(data, count: expected - 4)
    guard stored == actual else { throw GlassfinderError.gallery("checksum mismatch: stored CRC32 \(String(stored, radix: 16)), computed \(String(actual, radix: 16))") }
    guard data[afterCodes..<idsOffset].allSatisfy({ $0 == 0 }) else { throw GlassfinderError.gallery("non-zero padding bytes before the ids section") }
    return try Gallery(spec: spec, d: d,
                       codebooks: (0..<(M * spec.ksub * dsub)).map { f32(gfpqHeaderSize + 4 * $0) },
                       codes: Array(data[codesOffset..<afterCodes]),
                       ids: (0..<n).map { Int64(bitPattern: u64(idsOffset + 8 * $0)) },
                       rotation: spec.opq ? (0..<(d * d)).map { f32(gfpqHeaderSize + cbBytes + 4 * $0) } : nil,
                       refineScales: refine != nil ? (0..<d).map { f32(scalesOffset + 4 * $0) } : nil,
                       refineCodes: refine != nil ? data[refineOffset..<(refineOffset + n * d)].map { Int8(bitPattern: $0) } : nil,
                       shortlist: refine != nil ? shortlist : defaultShortlist)
}

/// x (n, d) times rotation.T (OPQ), Float.
public func rotate(_ x: [Float], _ rotation: [Float], d: Int) -> [Float] {
    var out = [Float](repeating: 0, count: x.count)
    for i in 0..<(x.count / d) {
        for r in 0..<d {
            var s: Float = 0
            for j in 0..<d { s += x[i * d + j] * rotation[r * d + j] }
            out[i * d + r] = s
        }
    }
    return out
}

/// Dot product of a[ao..<ao+n] and b[bo..<bo+n] (vDSP where available).
@inline(__always) func dot(_ a: [Float], _ ao: Int, _ b: [Float], _ bo: Int, _ n: Int) -> Float {
    #if canImport(Accelerate)
    var r: Float = 0
    a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in vDSP_dotpr(pa.baseAddress! + ao, 1, pb.baseAddress! + bo, 1, &r, vDSP_Length(n)) } }
    return r
    #else
    var s: Float = 0
    for j in 0..<n { s += a[ao + j] * b[bo + j] }
    return s
    #endif
}

/// gallery.encode: nearest centroid (L2) per sub-vector -> (n, M) codes; one-shot enrollment.
public func encode(codebooks: [Float], M: Int, ksub: Int, x: [Float], rotation: [Float]? = nil) -> [UInt8] {
    let dsub = codebooks.count / (M * ksub), d = M * dsub
    let xr = rotation.map { rotate(x, $0, d: d) } ?? x
    let halfNorms = (0..<(M * ksub)).map { 0.5 * dot(codebooks, $0 * dsub, codebooks, $0 * dsub, dsub) }
    var codes = [UInt8](repeating: 0, count: (xr.count / d) * M)
    for i in 0..<(xr.count / d) {
        for m in 0..<M {
            // argmin ||x - c||^2 = argmax x.c - ||c||^2 / 2; the first maximum wins (np.argmax).
            var best = 0, bestScore = -Float.infinity
            for c in 0..<ksub {
                let score = dot(xr, i * d + m * dsub, codebooks, (m * ksub + c) * dsub, dsub) - halfNorms[m * ksub + c]
                if score > bestScore { bestScore = score; best = c }
            }
            codes[i * M + m] = UInt8(best)
        }
    }
    return codes
}

/// gallery.sq8_encode: (n, d) codes clip(round(x / scale), -127, 127), Float division, rounding half
/// to even (numpy's round). One-shot enrollment with the gallery's scales.
public func sq8Encode(scales: [Float], x: [Float]) -> [Int8] {
    let d = scales.count, lim = Float(sq8Max)
    return x.indices.map { i in Int8(min(lim, max(-lim, (x[i] / scales[i % d]).rounded(.toNearestOrEven)))) }
}

/// gallery._lookup_tables: (nq, M, ksub) scores, HIGHER IS BETTER: IP <xq_m, c>; L2 -||xq_m - c||^2.
public func lookupTables(_ g: Gallery, _ xq: [Float]) -> [Float] {
    let M = g.spec.M, ksub = g.spec.ksub, dsub = g.dsub, nq = xq.count / g.d
    var lut = [Float](repeating: 0, count: nq * M * ksub)
    for q in 0..<nq {
        for m in 0..<M {
            let xo = q * g.d + m * dsub
            let qn = dot(xq, xo, xq, xo, dsub)
            for c in 0..<ksub {
                let co = (m * ksub + c) * dsub
                let ip = dot(g.codebooks, co, xq, xo, dsub)
                lut[(q * M + m) * ksub + c] = g.spec.metric == .ip ? ip : 2 * ip - dot(g.codebooks, co, g.codebooks, co, dsub) - qn
            }
        }
    }
    return lut
}

/// pq_search's (D, I), row-major (nq, k).
public struct PqResult { public let D: [Float]; public let I: [Int64]; public let k: Int }

/// gallery.pq_search
public func pqSearch(_ g: Gallery, _ xq: [Float], k: Int) throws -> PqResult {
    guard k >= 1 else { throw GlassfinderError.gallery("k must be a positive integer, got \(k)") }
    guard xq.count % g.d == 0, xq.allSatisfy({ $0.isFinite }) else { throw GlassfinderError.gallery("query vectors must be finite, shape (n, \(g.d))") }
    let x = g.rotation.map { rotate(xq, $0, d: g.d) } ?? xq
    let nq = x.count / g.d, M = g.spec.M, ksub = g.spec.ksub, isIP = g.spec.metric == .ip
    let lut = lookupTables(g, x)
    var D = [Float](repeating: isIP ? -.infinity : .infinity, count: nq * k), I = [Int64](repeating: -1, count: nq * k)
    var scores = [Float](repeating: 0, count: g.n)
    for q in 0..<nq {
        let base = q * M * ksub
        for i in 0..<g.n {
            var s = lut[base + Int(g.codes[i * M])]
            for m in 1..<M { s += lut[base + m * ksub + Int(g.codes[i * M + m])] }
            scores[i] = s
        }
        guard let scales = g.refineScales, let sq8 = g.refineCodes else {
            for (r, pos) in topK(scores, min(k, g.n)).enumerated() {
                D[q * k + r] = isIP ? scores[pos] : -scores[pos]
                I[q * k + r] = g.ids[pos]
            }
            continue
        }
        // Refine: the shortlist in gallery order (refined ties go to the lower position), re-scored
        // against the UNROTATED query with xHat_j = scale_j * code_j (Float, dimension order).
        let rows = topK(scores, min(g.n, max(k, g.shortlist))).sorted()
        let refined: [Float] = rows.map { row in
            var s: Float = 0
            for j in 0..<g.d {
                let xHat = scales[j] * Float(sq8[row * g.d + j]), qj = xq[q * g.d + j]
                s += isIP ? qj * xHat : (qj - xHat) * (qj - xHat)
            }
            return isIP ? s : -s  // higher is better, as in the ADC tables
        }
        for (r, i) in topK(refined, min(k, rows.count)).enumerated() {
            D[q * k + r] = isIP ? refined[i] : -refined[i]
            I[q * k + r] = g.ids[rows[i]]
        }
    }
    return PqResult(D: D, I: I, k: k)
}

/// gallery._top_k: positions of the k highest scores, best first, ties to the lower position.
public func topK(_ scores: [Float], _ k: Int) -> [Int] {
    guard k > 0 else { return [] }
    var pos: [Int] = []
    pos.reserveCapacity(k)
    for (i, s) in scores.enumerated() {
        if pos.count == k { if s <= scores[pos[k - 1]] { continue }; pos.removeLast() }
        var j = pos.count
        while j > 0 && scores[pos[j - 1]] < s { j -= 1 }
        pos.insert(i, at: j)
    }
    return pos
}

// Geometry shared by every platform. Translation of runtime/geometry.py (same conventions):
// - points are continuous (x, y) pixels, x right, y down; pixel (i, j) covers [i, i+1) x [j, j+1);
// - a 2x3 affine matrix is [Double] of 6, row-major [a00, a01, a02, a10, a11, a12];
// - "right"/"left" are the subject's.
import Foundation

/// geometry.KEYPOINT_NAMES
public let keypointNames = ["right_eye_outer", "right_eye_inner", "left_eye_inner", "left_eye_outer", "nose_bridge"]

/// geometry.CropTemplate: where the five keypoints land in the (width x height) crop.
public struct CropTemplate {
    public let width: Int
    public let height: Int
    public let points: [Double]  // (5, 2)

    public init(width: Int, height: Int, points: [Double]) throws {
        guard width >= 1, height >= 1 else { throw GlassfinderError.config("template size must be >= 1, got \(width)x\(height)") }
        guard points.count == 2 * keypointNames.count else { throw GlassfinderError.config("template needs \(keypointNames.count) points") }
        self.width = width
        self.height = height
        self.points = points
    }

    /// geometry.DEFAULT_TEMPLATE (128 x 64).
    public static let standard = try! CropTemplate(width: 128, height: 64, points: [30, 30, 52, 30, 76, 30, 98, 30, 64, 27])

    /// From CropTemplate.to_dict() JSON.
    public static func fromJSON(_ o: JSONObject) throws -> CropTemplate {
        let names = try o.strings("keypoints")
        guard names == keypointNames else { throw GlassfinderError.bundle("\(o.path).keypoints: must be \(keypointNames), got \(names)") }
        let rows = try o.list("points")
        var pts: [Double] = []
        for (i, r) in rows.enumerated() {
            guard let xy = r as? [Any], xy.count == 2 else { throw GlassfinderError.bundle("\(o.path).points[\(i)]: expected [x, y]") }
            pts.append(try JSONObject.asDouble(xy[0], "\(o.path).points[\(i)][0]"))
            pts.append(try JSONObject.asDouble(xy[1], "\(o.path).points[\(i)][1]"))
        }
        return try CropTemplate(width: try o.int("width"), height: try o.int("height"), points: pts)
    }
}

/// image_io.ImageLimits: the size policy of runtime/image_io.py _check_header (same messages).
public struct ImageLimits {
    public var maxPixels = 50_000_000  // decompression-bomb guard
    public var minSide = 32            // below this no face gives a usable glasses crop
    public var maxAspect = 8.0         // longer / shorter side above this is a banner, not a photo
    public init() {}

    public func check(width: Int, height: Int, name: String = "<image>") throws {
        guard width >= 1, height >= 1 else { throw GlassfinderError.image("\(name): corrupt image: the header says \(width)x\(height) pixels") }
        guard width * height <= maxPixels else {
            throw GlassfinderError.image("\(name): image too large: \(width)x\(height) = \(Int((Double(width * height) / 1e6).rounded())) megapixels is over the \(maxPixels / 1_000_000) MP limit (decompression bomb guard)")
        }
        guard min(width, height) >= minSide else {
            throw GlassfinderError.image("\(name): image too small: \(width)x\(height) pixels; a face needs at least \(minSide) pixels on each side")
        }
        guard Double(max(width, height)) / Double(min(width, height)) <= maxAspect else {
            throw GlassfinderError.image("\(name): extreme aspect ratio: \(width)x\(height) pixels is over \(Int(maxAspect)):1; crop it around the face")
        }
    }
}

/// An RGB image: (height, width, 3) bytes, row-major (the numpy uint8 array's layout).
public struct RgbImage {
    public let width: Int
    public let height: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]? = nil) throws {
        guard width >= 1, height >= 1 else { throw GlassfinderError.image("image has an empty size \(width)x\(height)") }
        let p = pixels ?? [UInt8](repeating: 0, count: width * height * 3)
        guard p.count == width * height * 3 else { throw GlassfinderError.image("need \(width * height * 3) RGB bytes, got \(p.count)") }
        self.width = width
        self.height = height
        self.pixels = p
    }

    @inline(__always) func get(_ x: Int, _ y: Int, _ c: Int) -> Int { Int(pixels[(y * width + x) * 3 + c]) }
}

/// geometry.estimate_similarity: least-squares similarity mapping src onto dst ((n, 2), n >= 2),
/// no reflection. Python runs Umeyama with a 2x2 SVD; in 2-D the optimal proper rotation times
/// scale is [[a, -b], [b, a]] with a = (C00 + C11) / var_s, b = (C10 - C01) / var_s for
/// C = cov(dst, src): the same matrix without an SVD (golden-checked, reflection case included).
public func estimateSimilarity(_ src: [Double], _ dst: [Double]) throws -> [Double] {
    guard src.count == dst.count, src.count % 2 == 0, src.count >= 4 else {
        throw GlassfinderError.config("need two (n>=2, 2) point arrays of equal shape")
    }
    let n = src.count / 2
    var msx = 0.0, msy = 0.0, mdx = 0.0, mdy = 0.0
    for i in 0..<n { msx += src[2 * i]; msy += src[2 * i + 1]; mdx += dst[2 * i]; mdy += dst[2 * i + 1] }
    msx /= Double(n); msy /= Double(n); mdx /= Double(n); mdy /= Double(n)
    var varS = 0.0, c00 = 0.0, c01 = 0.0, c10 = 0.0, c11 = 0.0
    for i in 0..<n {
        let sx = src[2 * i] - msx, sy = src[2 * i + 1] - msy
        let dx = dst[2 * i] - mdx, dy = dst[2 * i + 1] - mdy
        varS += sx * sx + sy * sy
        c00 += dx * sx; c01 += dx * sy; c10 += dy * sx; c11 += dy * sy
    }
    varS /= Double(n)
    guard varS > 1e-12 else { throw GlassfinderError.config("source points are degenerate (all at one place)") }
    let a = (c00 + c11) / Double(n) / varS
    let b = (c10 - c01) / Double(n) / varS
    return [a, -b, mdx - (a * msx - b * msy), b, a, mdy - (b * msx + a * msy)]
}

/// geometry.apply_affine: map (n, 2) points through a 2x3 matrix.
public func applyAffine(_ A: [Double], _ pts: [Double]) -> [Double] {
    var out = [Double](repeating: 0, count: pts.count)
    for i in 0..<(pts.count / 2) {
        let x = pts[2 * i], y = pts[2 * i + 1]
        out[2 * i] = x * A[0] + y * A[1] + A[2]
        out[2 * i + 1] = x * A[3] + y * A[4] + A[5]
    }
    return out
}

/// geometry.invert_affine, with the arithmetic of numpy's np.linalg.inv (OpenBLAS dgesv: LU with
/// partial pivoting, reciprocal pivots, a fused multiply-add in the back substitution) and of its
/// matmul for the translation, so it is bit-identical on FMA machines: the warps sample through this
/// matrix and a last-bit difference flips pixels at exact bilinear ties (Geometry.kt invertAffine).
public func invertAffine(_ A: [Double]) -> [Double] {
    let pivot = abs(A[3]) > abs(A[0])
    let a = pivot ? A[3] : A[0], b = pivot ? A[4] : A[1], c = pivot ? A[0] : A[3], d = pivot ? A[1] : A[4]
    let r = 1.0 / a
    let l = c * r
    let u = d - l * b
    let ru = 1.0 / u
    func column(_ e0: Double, _ e1: Double) -> (Double, Double) {
        let y1 = pivot ? e1 : e0
        let y2 = (pivot ? e0 : e1) - l * y1
        let x2 = y2 * ru
        return (y1.addingProduct(-b, x2) * r, x2)  // fma(-b, x2, y1) * r
    }
    let c0 = column(1, 0), c1 = column(0, 1)
    // -M @ t as numpy's matmul computes it: fma(-m00, t0, -m01 * t1).
    return [c0.0, c1.0, (-c1.0 * A[5]).addingProduct(-c0.0, A[2]),
            c0.1, c1.1, (-c1.1 * A[5]).addingProduct(-c0.1, A[2])]
}

/// geometry.crop_matrix
public func cropMatrix(_ keypoints: [Double], _ template: CropTemplate = .standard) throws -> [Double] {
    try estimateSimilarity(keypoints, template.points)
}

/// geometry.warp_affine: bilinear, black outside, with Pillow's arithmetic
/// (libImaging/Geometry.c affine_transform + bilinear_filter32RGB), so bytes match the runtime.
/// vImageAffineWarp would be faster but is not bit-identical; the crop is small (128x64).
public func warpAffine(_ image: RgbImage, _ A: [Double], _ outWidth: Int, _ outHeight: Int) -> RgbImage {
    let inv = invertAffine(A)
    var out = try! RgbImage(width: outWidth, height: outHeight)
    let w = image.width, h = image.height
    func clip(_ i: Int, _ size: Int) -> Int { i < 0 ? 0 : (i < size ? i : size - 1) }
    for oy in 0..<outHeight {
        for ox in 0..<outWidth {
            let cx = Double(ox) + 0.5, cy = Double(oy) + 0.5
            var xin = inv[0] * cx + inv[1] * cy + inv[2]
            var yin = inv[3] * cx + inv[4] * cy + inv[5]
            if xin < 0 || xin >= Double(w) || yin < 0 || yin >= Double(h) { continue }  // stays black
            xin -= 0.5
            yin -= 0.5
            let x = Int(xin.rounded(.down)), y = Int(yin.rounded(.down))
            let dx = xin - Double(x), dy = yin - Double(y)
            let x0 = clip(x, w), x1 = clip(x + 1, w), y0 = clip(y, h)
            let o = (oy * outWidth + ox) * 3
            for c in 0..<3 {
                let a0 = Double(image.get(x0, y0, c))
                var v1 = a0 + (Double(image.get(x1, y0, c)) - a0) * dx
                var v2 = v1
                if y + 1 >= 0 && y + 1 < h {
                    let b0 = Double(image.get(x0, y + 1, c))
                    v2 = b0 + (Double(image.get(x1, y + 1, c)) - b0) * dx
                }
                v1 += (v2 - v1) * dy
                out.pixels[o + c] = UInt8(Int(v1))  // Pillow truncates: (UINT8)v1
            }
        }
    }
    return out
}

/// Output pixels per source pixel of a 2x3 matrix (sqrt |det|).
public func affineScale(_ A: [Double]) -> Double { abs(A[0] * A[4] - A[1] * A[3]).squareRoot() }

/// Pillow's Image.reduce(k): k x k box average with Pillow's fixed-point rounding
/// ((sum + n / 2) * multiplier) >> 24, multiplier = UInt32(Float(2^32) / Float(256 n)); partial
/// blocks at the right/bottom edges average the pixels they have.
public func reduce(_ image: RgbImage, _ k: Int) -> RgbImage {
    let w = (image.width + k - 1) / k, h = (image.height + k - 1) / k
    var out = try! RgbImage(width: w, height: h)
    for y in 0..<h {
        for x in 0..<w {
            let y1 = min((y + 1) * k, image.height), x1 = min((x + 1) * k, image.width)
            let count = (y1 - y * k) * (x1 - x * k)
            let multiplier = UInt64(Float(4294967296.0) / Float(256 * count))
            for c in 0..<3 {
                var sum = count / 2
                for yy in (y * k)..<y1 { for xx in (x * k)..<x1 { sum += image.get(xx, yy, c) } }
                out.pixels[(y * w + x) * 3 + c] = UInt8(((UInt64(sum) * multiplier) & 0xFFFF_FFFF) >> 24)
            }
        }
    }
    return out
}

/// geometry.warp_affine_prefiltered, the pipeline's warp: a shrinking A (scale < 1) is
/// warpAffineSupersampled, after a box reduction by k = floor(1 / scale) when A shrinks 2x or more
/// (folded into the matrix); an enlarging A is warpAffine (bilinear).
public func warpAffinePrefiltered(_ image: RgbImage, _ A: [Double], _ outWidth: Int, _ outHeight: Int) -> RgbImage {
    let scale = affineScale(A)
    let warp = scale < 1.0 ? warpAffineSupersampled : warpAffine
    let k = scale > 0 ? Int((1.0 / scale).rounded(.down)) : 1
    if k < 2 { return warp(image, A, outWidth, outHeight) }
    let kd = Double(k)
    let Ak = [A[0] * kd, A[1] * kd, A[2], A[3] * kd, A[4] * kd, A[5]]
    return warp(reduce(image, k), Ak, outWidth, outHeight)
}

/// geometry.warp_affine_supersampled: each output pixel is the mean of 2 x 2 nearest-neighbour
/// samples at +-1/4 output pixel around its centre (Pillow's NEAREST transform at twice the size,
/// then reduce(2)); black outside.
public func warpAffineSupersampled(_ image: RgbImage, _ A: [Double], _ outWidth: Int, _ outHeight: Int) -> RgbImage {
    let inv = invertAffine(A)
    // Halving the linear part (exact in binary) maps double-size pixel centres onto the output's.
    let a = [inv[0] / 2, inv[1] / 2, inv[2], inv[3] / 2, inv[4] / 2, inv[5]]
    return reduce(transformNearest(image, a, 2 * outWidth, 2 * outHeight), 2)
}

/// Pillow's Image.transform(AFFINE, NEAREST) with the output -> source matrix `a`, black outside:
/// libImaging/Geometry.c ImagingTransformAffine and its three paths, chosen as Pillow chooses them
/// (scale only; 16.16 fixed point when the corners map inside +-32768; doubles otherwise).
public func transformNearest(_ image: RgbImage, _ a: [Double], _ outWidth: Int, _ outHeight: Int) -> RgbImage {
    var out = try! RgbImage(width: outWidth, height: outHeight)
    let w = image.width, h = image.height
    func copy(_ x: Int, _ y: Int, _ xin: Int, _ yin: Int) {
        if xin < 0 || xin >= w || yin < 0 || yin >= h { return }
        let s = (yin * w + xin) * 3, d = (y * outWidth + x) * 3
        for c in 0..<3 { out.pixels[d + c] = image.pixels[s + c] }
    }
    func coord(_ v: Double) -> Int { v < 0 ? -1 : Int(v) }
    if a[1] == 0 && a[3] == 0 {  // ImagingScaleAffine: source columns tabulated once
        var xo = a[2] + a[0] * 0.5
        var xin = [Int](repeating: 0, count: outWidth)
        for x in 0..<outWidth { xin[x] = coord(xo); xo += a[0] }
        var yo = a[5] + a[4] * 0.5
        for y in 0..<outHeight {
            let yin = coord(yo)
            for x in 0..<outWidth { copy(x, y, xin[x], yin) }
            yo += a[4]
        }
        return out
    }
    func fits(_ x: Int, _ y: Int) -> Bool {
        abs(Double(x) * a[0] + Double(y) * a[1] + a[2]) < 32768.0 && abs(Double(x) * a[3] + Double(y) * a[4] + a[5]) < 32768.0
    }
    if fits(0, 0) && fits(outWidth, outHeight) && fits(0, outHeight) && fits(outWidth, 0) {  // affine_fixed
        func fix(_ v: Double) -> Int32 { Int32((v * 65536.0 + 0.5).rounded(.down)) }
        let a0 = fix(a[0]), a1 = fix(a[1]), a3 = fix(a[3]), a4 = fix(a[4])
        var a2 = fix(a[2] + a[0] * 0.5 + a[1] * 0.5)
        var a5 = fix(a[5] + a[3] * 0.5 + a[4] * 0.5)
        for y in 0..<outHeight {
            var xx = a2, yy = a5
            for x in 0..<outWidth { copy(x, y, Int(xx >> 16), Int(yy >> 16)); xx &+= a0; yy &+= a3 }
            a2 &+= a1; a5 &+= a4
        }
        return out
    }
    var xo = a[2] + a[1] * 0.5 + a[0] * 0.5
    var yo = a[5] + a[4] * 0.5 + a[3] * 0.5
    for y in 0..<outHeight {
        var xx = xo, yy = yo
        for x in 0..<outWidth { copy(x, y, coord(xx), coord(yy)); xx += a[0]; yy += a[3] }
        xo += a[1]; yo += a[4]
    }
    return out
}

// Geometry shared by every platform: the glasses-crop template and affine maps.
// Translation of runtime/geometry.py; same conventions:
// - points are continuous (x, y) pixels, x right, y down; pixel (i, j) covers [i, i+1) x [j, j+1),
//   its centre is (i + 0.5, j + 0.5) (Pillow's convention, which warpAffine reproduces);
// - a 2x3 affine matrix A is a DoubleArray(6), row-major [a00, a01, a02, a10, a11, a12], and maps
//   p to (a00 px + a01 py + a02, a10 px + a11 py + a12);
// - "right"/"left" are the subject's.
package glassfinder.core

import kotlin.math.floor
import kotlin.math.sqrt

/** geometry.KEYPOINT_NAMES: the five landmarks the glasses crop is aligned on. */
val KEYPOINT_NAMES: List<String> = listOf(
    "right_eye_outer", "right_eye_inner", "left_eye_inner", "left_eye_outer", "nose_bridge")

/** geometry.CropTemplate: where the five keypoints land in the (width x height) crop. */
class CropTemplate(val width: Int, val height: Int, val points: DoubleArray /* (5, 2) */) {
    init {
        if (width < 1 || height < 1) throw ConfigException("template size must be >= 1, got ${width}x$height")
        if (points.size != 2 * KEYPOINT_NAMES.size) throw ConfigException("template needs ${KEYPOINT_NAMES.size} points")
    }

    companion object {
        /** geometry.DEFAULT_TEMPLATE (128 x 64). */
        val DEFAULT = CropTemplate(128, 64, doubleArrayOf(
            30.0, 30.0, 52.0, 30.0, 76.0, 30.0, 98.0, 30.0, 64.0, 27.0))

        /** From CropTemplate.to_dict() JSON: {"width", "height", "keypoints", "points"}. */
        fun fromJson(o: JsonObject): CropTemplate {
            val names = o.strings("keypoints")
            if (names != KEYPOINT_NAMES) throw JsonException("${o.path}.keypoints: must be $KEYPOINT_NAMES, got $names")
            val rows = o.list("points")
            val pts = DoubleArray(2 * rows.size)
            for ((i, r) in rows.withIndex()) {
                val xy = r as? List<*> ?: throw JsonException("${o.path}.points[$i]: expected [x, y]")
                if (xy.size != 2) throw JsonException("${o.path}.points[$i]: expected [x, y]")
                pts[2 * i] = JsonObject.asDouble(xy[0], "${o.path}.points[$i][0]")
                pts[2 * i + 1] = JsonObject.asDouble(xy[1], "${o.path}.points[$i][1]")
            }
            return CropTemplate(o.int("width"), o.int("height"), pts)
        }
    }
}

/** image_io.ImageLimits: what the pipeline accepts, checked from the size alone (before decoding
 * pixels). Same policy and messages as runtime/image_io.py _check_header. */
class ImageLimits(
    val maxPixels: Long = 50_000_000L,  // decompression-bomb guard
    val minSide: Int = 32,              // below this no face gives a usable glasses crop
    val maxAspect: Double = 8.0         // longer / shorter side above this is a banner, not a photo
) {
    fun check(width: Int, height: Int, name: String = "<image>") {
        if (width < 1 || height < 1) throw ImageException("$name: corrupt image: the header says ${width}x$height pixels")
        if (width.toLong() * height > maxPixels) {
            throw ImageException("$name: image too large: ${width}x$height = ${Math.round(width.toDouble() * height / 1e6)} megapixels is over the ${maxPixels / 1_000_000} MP limit (decompression bomb guard)")
        }
        if (minOf(width, height) < minSide) {
            throw ImageException("$name: image too small: ${width}x$height pixels; a face needs at least $minSide pixels on each side")
        }
        if (maxOf(width, height).toDouble() / minOf(width, height) > maxAspect) {
            throw ImageException("$name: extreme aspect ratio: ${width}x$height pixels is over ${maxAspect.toInt()}:1; crop it around the face")
        }
    }
}

/** An RGB image: (height, width, 3) bytes, row-major, 0..255 (the numpy uint8 array's layout). */
class RgbImage(val width: Int, val height: Int, val pixels: ByteArray = ByteArray(width * height * 3)) {
    init {
        if (width < 1 || height < 1) throw ImageException("image has an empty size ${width}x$height")
        if (pixels.size != width * height * 3) throw ImageException("need ${width * height * 3} RGB bytes, got ${pixels.size}")
    }

    /** Channel c (0 = R) of pixel (x, y), 0..255. */
    fun get(x: Int, y: Int, c: Int): Int = pixels[(y * width + x) * 3 + c].toInt() and 0xFF
}

/** geometry.estimate_similarity: least-squares similarity (rotation, uniform scale, translation)
 * mapping src onto dst, both (n, 2) with n >= 2, no reflection. Returns a 2x3 matrix.
 *
 * Python runs Umeyama (1991) with a 2x2 SVD. In 2-D the best proper rotation R(t) maximises
 * tr(R(t)^T C) = cos t (C00 + C11) + sin t (C10 - C01) for C = cov(dst, src), so scale * R is
 * [[a, -b], [b, a]] with a = (C00 + C11) / var_s and b = (C10 - C01) / var_s: the same matrix as
 * Umeyama's without an SVD (checked against the golden vectors, reflection case included). */
fun estimateSimilarity(src: DoubleArray, dst: DoubleArray): DoubleArray {
    if (src.size != dst.size || src.size % 2 != 0 || src.size < 4) {
        throw IllegalArgumentException("need two (n>=2, 2) point arrays of equal shape, got ${src.size / 2} and ${dst.size / 2} points")
    }
    val n = src.size / 2
    var msx = 0.0; var msy = 0.0; var mdx = 0.0; var mdy = 0.0
    for (i in 0 until n) {
        msx += src[2 * i]; msy += src[2 * i + 1]; mdx += dst[2 * i]; mdy += dst[2 * i + 1]
    }
    msx /= n; msy /= n; mdx /= n; mdy /= n
    var varS = 0.0
    var c00 = 0.0; var c01 = 0.0; var c10 = 0.0; var c11 = 0.0  // C = d^T s / n
    for (i in 0 until n) {
        val sx = src[2 * i] - msx; val sy = src[2 * i + 1] - msy
        val dx = dst[2 * i] - mdx; val dy = dst[2 * i + 1] - mdy
        varS += sx * sx + sy * sy
        c00 += dx * sx; c01 += dx * sy; c10 += dy * sx; c11 += dy * sy
    }
    varS /= n
    if (varS <= 1e-12) throw IllegalArgumentException("source points are degenerate (all at one place)")
    val a = (c00 + c11) / n / varS
    val b = (c10 - c01) / n / varS
    return doubleArrayOf(a, -b, mdx - (a * msx - b * msy), b, a, mdy - (b * msx + a * msy))
}

/** geometry.apply_affine: map (n, 2) points through a 2x3 matrix. */
fun applyAffine(A: DoubleArray, pts: DoubleArray): DoubleArray {
    val out = DoubleArray(pts.size)
    for (i in 0 until pts.size / 2) {
        val x = pts[2 * i]; val y = pts[2 * i + 1]
        out[2 * i] = x * A[0] + y * A[1] + A[2]
        out[2 * i + 1] = x * A[3] + y * A[4] + A[5]
    }
    return out
}

/** geometry.invert_affine: inverse of a 2x3 affine matrix, with the arithmetic of numpy's
 * np.linalg.inv (OpenBLAS dgesv: LU with partial pivoting, reciprocal pivots, a fused multiply-add
 * in the back substitution) and of its matmul for the translation, so the result is bit-identical
 * on FMA machines. It matters: the warps sample through this matrix, and a last-bit difference
 * flips pixels at exact bilinear ties (e.g. 1 / 6.4 is 0.15625 there, 6.4 / (6.4 * 6.4) is not). */
fun invertAffine(A: DoubleArray): DoubleArray {
    // LU of the 2x2 part, rows swapped when |a10| > |a00| (getf2: IAMAX pivot, scaled by 1 / pivot).
    val pivot = Math.abs(A[3]) > Math.abs(A[0])
    val a = if (pivot) A[3] else A[0]
    val b = if (pivot) A[4] else A[1]
    val c = if (pivot) A[0] else A[3]
    val d = if (pivot) A[1] else A[4]
    if (a == 0.0) throw IllegalArgumentException("affine matrix is singular")
    val r = 1.0 / a
    val l = c * r
    val u = d - l * b
    if (u == 0.0) throw IllegalArgumentException("affine matrix is singular")
    val ru = 1.0 / u
    // getrs: column j of the inverse solves LU x = P e_j (forward, then backward with 1 / diagonal).
    fun column(e0: Double, e1: Double): DoubleArray {
        val y1 = if (pivot) e1 else e0
        val y2 = (if (pivot) e0 else e1) - l * y1
        val x2 = y2 * ru
        return doubleArrayOf(fusedMultiplyAdd(-b, x2, y1) * r, x2)
    }
    val c0 = column(1.0, 0.0)
    val c1 = column(0.0, 1.0)
    // -M @ t as numpy's matmul computes it: fma(-m00, t0, -m01 * t1).
    return doubleArrayOf(c0[0], c1[0], fusedMultiplyAdd(-c0[0], A[2], -c1[0] * A[5]),
                         c0[1], c1[1], fusedMultiplyAdd(-c0[1], A[2], -c1[1] * A[5]))
}

/** x * y + z rounded once (IEEE fma). BigDecimal, not Math.fma: Math.fma needs Android API 33. */
fun fusedMultiplyAdd(x: Double, y: Double, z: Double): Double =
    java.math.BigDecimal(x).multiply(java.math.BigDecimal(y)).add(java.math.BigDecimal(z)).toDouble()

/** geometry.crop_matrix: 2x3 similarity from image pixels to crop pixels, from the (5, 2) keypoints. */
fun cropMatrix(keypoints: DoubleArray, template: CropTemplate = CropTemplate.DEFAULT): DoubleArray =
    estimateSimilarity(keypoints, template.points)

/** geometry.warp_affine: warp `image` with A (source -> output pixels) into outWidth x outHeight.
 *
 * Bilinear, black outside: the same arithmetic as Pillow's Image.transform(AFFINE, BILINEAR)
 * (libImaging/Geometry.c affine_transform + bilinear_filter32RGB), so the bytes match the runtime. */
fun warpAffine(image: RgbImage, A: DoubleArray, outWidth: Int, outHeight: Int): RgbImage {
    return warpWithInverse(image, invertAffine(A), outWidth, outHeight)
}

/** The warp given the output -> source matrix `inv` (what Pillow receives). */
fun warpWithInverse(image: RgbImage, inv: DoubleArray, outWidth: Int, outHeight: Int): RgbImage {
    val out = RgbImage(outWidth, outHeight)
    val w = image.width
    val h = image.height
    for (oy in 0 until outHeight) {
        for (ox in 0 until outWidth) {
            // Sample at the output pixel centre.
            val cx = ox + 0.5
            val cy = oy + 0.5
            var xin = inv[0] * cx + inv[1] * cy + inv[2]
            var yin = inv[3] * cx + inv[4] * cy + inv[5]
            if (xin < 0.0 || xin >= w || yin < 0.0 || yin >= h) continue  // outside: stays black
            xin -= 0.5
            yin -= 0.5
            val x = floor(xin).toInt()
            val y = floor(yin).toInt()
            val dx = xin - x
            val dy = yin - y
            val x0 = clip(x, w)
            val x1 = clip(x + 1, w)
            val y0 = clip(y, h)
            val o = (oy * outWidth + ox) * 3
            for (c in 0 until 3) {
                val a0 = image.get(x0, y0, c)
                var v1 = a0 + (image.get(x1, y0, c) - a0) * dx
                val v2 = if (y + 1 >= 0 && y + 1 < h) {
                    val b0 = image.get(x0, y + 1, c)
                    b0 + (image.get(x1, y + 1, c) - b0) * dx
                } else v1
                v1 += (v2 - v1) * dy
                out.pixels[o + c] = v1.toInt().toByte()  // Pillow truncates (UINT8)v1
            }
        }
    }
    return out
}

private fun clip(i: Int, size: Int): Int = if (i < 0) 0 else if (i < size) i else size - 1

/** Output pixels per source pixel of a 2x3 matrix (sqrt |det|). */
fun affineScale(A: DoubleArray): Double = sqrt(Math.abs(A[0] * A[4] - A[1] * A[3]))

// Face-mesh stages (MediaPipe face_landmark, 468 points) and the glasses crop.
// Translation of runtime/landmarks.py and runtime/align.py:
//
//     faceRoi (from a detection) -> roiMatrix -> cropFace -> [model] -> decodeLandmarks
//     -> glassesKeypoints -> alignCrop (cropMatrix + warp)
package glassfinder.core

import kotlin.math.atan2
import kotlin.math.cos
import kotlin.math.exp
import kotlin.math.floor
import kotlin.math.max
import kotlin.math.sin
import kotlin.math.sqrt

/** landmarks.MeshOptions: how the face is cropped for the mesh model and read back. */
class MeshOptions(
    val inputSize: Int = 192,
    val numLandmarks: Int = 468,
    val roiScale: Double = 1.5,
    val presenceThreshold: Double = 0.5,
    // Mesh indices of KEYPOINT_NAMES (right eye outer/inner, left eye inner/outer, bridge).
    val keypointIndices: IntArray = intArrayOf(33, 133, 362, 263, 168)
) {
    companion object {
        /** From MeshOptions.to_dict() JSON (extra keys such as the eye rings are ignored, as in Python). */
        fun fromJson(o: JsonObject) = MeshOptions(
            inputSize = o.int("input_size"), numLandmarks = o.int("num_landmarks"), roiScale = o.double("roi_scale"),
            presenceThreshold = o.double("presence_threshold"), keypointIndices = o.ints("keypoint_indices"))
    }
}

/** landmarks.FaceRoi: a rotated square in image pixels (angle in radians, positive = clockwise). */
class FaceRoi(val cx: Double, val cy: Double, val side: Double, val angle: Double)

/** landmarks.face_roi: box (4,) x0, y0, x1, y1 and the detector's two eye keypoints (image pixels). */
fun faceRoi(box: DoubleArray, rightEye: DoubleArray, leftEye: DoubleArray, scale: Double = 1.5): FaceRoi {
    val angle = atan2(leftEye[1] - rightEye[1], leftEye[0] - rightEye[0])
    val side = scale * max(box[2] - box[0], box[3] - box[1])
    return FaceRoi((box[0] + box[2]) / 2, (box[1] + box[3]) / 2, side, angle)
}

/** landmarks.roi_matrix: 2x3 map from image pixels to the size x size crop of the roi (level eyes). */
fun roiMatrix(roi: FaceRoi, size: Int): DoubleArray {
    val s = size / roi.side
    val c = cos(roi.angle)
    val n = sin(roi.angle)
    // rotate by -angle, then scale
    val m00 = s * c; val m01 = s * n; val m10 = s * -n; val m11 = s * c
    val tx = size / 2.0 - (m00 * roi.cx + m01 * roi.cy)
    val ty = size / 2.0 - (m10 * roi.cx + m11 * roi.cy)
    return doubleArrayOf(m00, m01, tx, m10, m11, ty)
}

/** landmarks.crop_face: (size, size) RGB crop through the image -> crop matrix (black outside). */
fun cropFace(image: RgbImage, A: DoubleArray, size: Int): RgbImage = warpAffinePrefiltered(image, A, size, size)

/** landmarks.presence_score: sigmoid of the face-flag logit, clipped to +-80 so exp cannot overflow. */
fun presenceScore(faceFlag: Float): Double = 1.0 / (1.0 + exp(-faceFlag.toDouble().coerceIn(-80.0, 80.0)))

/** landmarks.decode_landmarks: raw (numLandmarks * 3) crop-pixel output -> (numLandmarks, 3)
 * float32 image pixels (x, y, z); A is the image -> crop matrix, z is scaled like x and y. */
fun decodeLandmarks(raw: FloatArray, A: DoubleArray, numLandmarks: Int = 468): FloatArray {
    if (raw.size != numLandmarks * 3) throw IllegalArgumentException("need ${numLandmarks * 3} values, got ${raw.size}")
    val inv = invertAffine(A)
    val zScale = sqrt(Math.abs(inv[0] * inv[4] - inv[1] * inv[3]))
    val out = FloatArray(raw.size)
    for (i in 0 until numLandmarks) {
        val x = raw[3 * i].toDouble()
        val y = raw[3 * i + 1].toDouble()
        out[3 * i] = (x * inv[0] + y * inv[1] + inv[2]).toFloat()
        out[3 * i + 1] = (x * inv[3] + y * inv[4] + inv[5]).toFloat()
        out[3 * i + 2] = (raw[3 * i + 2] * zScale).toFloat()
    }
    return out
}

/** landmarks.roi_from_mesh: the refinement roi from a (n, 3) mesh: levelled on the outer eye corners
 * (33 -> 263), the mesh's bounding box in that levelled frame, scaled and squared on its long side. */
fun roiFromMesh(mesh: FloatArray, scale: Double = 1.5): FaceRoi {
    // landmarks._face_axes
    var ex0 = mesh[3 * 263].toDouble() - mesh[3 * 33]
    var ex1 = mesh[3 * 263 + 1].toDouble() - mesh[3 * 33 + 1]
    val norm = maxOf(sqrt(ex0 * ex0 + ex1 * ex1), 1e-9)  // np.linalg.norm
    ex0 /= norm
    ex1 /= norm
    val ey0 = -ex1
    val ey1 = ex0
    var uMin = Double.POSITIVE_INFINITY; var uMax = Double.NEGATIVE_INFINITY
    var vMin = Double.POSITIVE_INFINITY; var vMax = Double.NEGATIVE_INFINITY
    for (i in 0 until mesh.size / 3) {
        val x = mesh[3 * i].toDouble()
        val y = mesh[3 * i + 1].toDouble()
        val u = x * ex0 + y * ex1
        val v = x * ey0 + y * ey1
        uMin = minOf(uMin, u); uMax = maxOf(uMax, u); vMin = minOf(vMin, v); vMax = maxOf(vMax, v)
    }
    val cu = (uMin + uMax) / 2
    val cv = (vMin + vMax) / 2
    val side = scale * maxOf(uMax - uMin, vMax - vMin)
    return FaceRoi(cu * ex0 + cv * ey0, cu * ex1 + cv * ey1, side, atan2(ex1, ex0))
}

/** landmarks.glasses_keypoints: (5, 2) float32 image pixels in KEYPOINT_NAMES order from a (n, 3) mesh. */
fun glassesKeypoints(mesh: FloatArray, opts: MeshOptions = MeshOptions()): FloatArray {
    val out = FloatArray(2 * opts.keypointIndices.size)
    for ((j, idx) in opts.keypointIndices.withIndex()) {
        out[2 * j] = mesh[3 * idx]
        out[2 * j + 1] = mesh[3 * idx + 1]
    }
    return out
}

/** align.align_crop: RGB image + (5, 2) glasses keypoints (image pixels) -> the
 * (template.height, template.width) crop and the 2x3 image -> crop matrix. */
class AlignedCrop(val crop: RgbImage, val matrix: DoubleArray)

fun alignCrop(image: RgbImage, keypoints: DoubleArray, template: CropTemplate = CropTemplate.DEFAULT): AlignedCrop {
    if (keypoints.size != template.points.size || keypoints.any { it.isNaN() || it.isInfinite() }) {
        throw ImageException("alignCrop needs (${template.points.size / 2}, 2) finite keypoints, got ${keypoints.size} values")
    }
    val A = cropMatrix(keypoints, template)
    return AlignedCrop(warpAffinePrefiltered(image, A, template.width, template.height), A)
}

/** geometry.warp_affine_prefiltered, the pipeline's warp: a shrinking A (scale < 1) is
 * warpAffineSupersampled, after a box reduction of the source by k = floor(1 / scale) when A
 * shrinks it 2x or more (folded into the matrix); an enlarging A is warpAffine (bilinear). */
fun warpAffinePrefiltered(image: RgbImage, A: DoubleArray, outWidth: Int, outHeight: Int): RgbImage {
    val scale = affineScale(A)
    val warp: (RgbImage, DoubleArray, Int, Int) -> RgbImage = if (scale < 1.0) ::warpAffineSupersampled else ::warpAffine
    val k = if (scale > 0) floor(1.0 / scale).toInt() else 1
    if (k < 2) return warp(image, A, outWidth, outHeight)
    // Reduced pixel i averages source pixels [i*k, (i+1)*k): continuous x_reduced = x / k.
    val Ak = doubleArrayOf(A[0] * k, A[1] * k, A[2], A[3] * k, A[4] * k, A[5])
    return warp(reduce(image, k), Ak, outWidth, outHeight)
}

/** geometry.warp_affine_supersampled: each output pixel is the mean of 2 x 2 nearest-neighbour
 * samples at +-1/4 output pixel around its centre (Pillow's NEAREST transform at twice the size,
 * then reduce(2)); black outside. */
fun warpAffineSupersampled(image: RgbImage, A: DoubleArray, outWidth: Int, outHeight: Int): RgbImage {
    val inv = invertAffine(A)
    // Halving the linear part (exact in binary) maps double-size pixel centres onto the output's.
    val a = doubleArrayOf(inv[0] / 2, inv[1] / 2, inv[2], inv[3] / 2, inv[4] / 2, inv[5])
    return reduce(transformNearest(image, a, 2 * outWidth, 2 * outHeight), 2)
}

/** Pillow's Image.transform(AFFINE, NEAREST) with the output -> source matrix `a`, black outside:
 * libImaging/Geometry.c ImagingTransformAffine and its three paths, chosen as Pillow chooses them
 * (scale only; 16.16 fixed point when the corners map inside +-32768; doubles otherwise), each with
 * Pillow's own accumulation, so the bytes match the runtime. */
fun transformNearest(image: RgbImage, a: DoubleArray, outWidth: Int, outHeight: Int): RgbImage {
    val out = RgbImage(outWidth, outHeight)
    fun copy(x: Int, y: Int, xin: Int, yin: Int) {
        if (xin < 0 || xin >= image.width || yin < 0 || yin >= image.height) return
        System.arraycopy(image.pixels, (yin * image.width + xin) * 3, out.pixels, (y * outWidth + x) * 3, 3)
    }
    fun coord(v: Double): Int = if (v < 0.0) -1 else v.toInt()
    if (a[1] == 0.0 && a[3] == 0.0) {  // ImagingScaleAffine: source columns tabulated once
        var xo = a[2] + a[0] * 0.5
        val xin = IntArray(outWidth) { val c = coord(xo); xo += a[0]; c }
        var yo = a[5] + a[4] * 0.5
        for (y in 0 until outHeight) {
            val yin = coord(yo)
            for (x in 0 until outWidth) copy(x, y, xin[x], yin)
            yo += a[4]
        }
        return out
    }
    fun fits(x: Int, y: Int) = Math.abs(x * a[0] + y * a[1] + a[2]) < 32768.0 && Math.abs(x * a[3] + y * a[4] + a[5]) < 32768.0
    if (fits(0, 0) && fits(outWidth, outHeight) && fits(0, outHeight) && fits(outWidth, 0)) {  // affine_fixed
        fun fix(v: Double): Int { val t = v * 65536.0 + 0.5; return if (t < 0.0) floor(t).toInt() else t.toInt() }
        val a0 = fix(a[0]); val a1 = fix(a[1]); val a3 = fix(a[3]); val a4 = fix(a[4])
        var a2 = fix(a[2] + a[0] * 0.5 + a[1] * 0.5)
        var a5 = fix(a[5] + a[3] * 0.5 + a[4] * 0.5)
        for (y in 0 until outHeight) {
            var xx = a2; var yy = a5
            for (x in 0 until outWidth) { copy(x, y, xx shr 16, yy shr 16); xx += a0; yy += a3 }
            a2 += a1; a5 += a4
        }
        return out
    }
    var xo = a[2] + a[1] * 0.5 + a[0] * 0.5
    var yo = a[5] + a[4] * 0.5 + a[3] * 0.5
    for (y in 0 until outHeight) {
        var xx = xo; var yy = yo
        for (x in 0 until outWidth) { copy(x, y, coord(xx), coord(yy)); xx += a[0]; yy += a[3] }
        xo += a[1]; yo += a[4]
    }
    return out
}

/** Pillow's Image.reduce(k) (libImaging/Reduce.c): k x k box average; the last column/row
 * averages the partial block it has. Pillow's fixed-point rounding, reproduced exactly:
 * ((sum + n / 2) * multiplier) >> 24 with multiplier = (uint32)(2^32f / (256 n)) in float32. */
fun reduce(image: RgbImage, k: Int): RgbImage {
    val w = (image.width + k - 1) / k
    val h = (image.height + k - 1) / k
    val out = RgbImage(w, h)
    for (y in 0 until h) {
        for (x in 0 until w) {
            val y1 = minOf((y + 1) * k, image.height)
            val x1 = minOf((x + 1) * k, image.width)
            val count = (y1 - y * k) * (x1 - x * k)
            val multiplier = (4294967296f / (256 * count).toFloat()).toLong()
            for (c in 0 until 3) {
                var sum = count / 2
                for (yy in y * k until y1) for (xx in x * k until x1) sum += image.get(xx, yy, c)
                out.pixels[(y * w + x) * 3 + c] = (((sum.toLong() * multiplier) and 0xFFFFFFFFL) shr 24).toByte()
            }
        }
    }
    return out
}

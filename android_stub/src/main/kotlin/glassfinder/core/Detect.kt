// Face detection stages (BlazeFace short range). Translation of runtime/detect.py:
//
//     letterbox -> [model] -> generateAnchors (once) -> decodeBoxes -> weightedNms -> project
//
// Float32 where the Python stage computes in float32 (decode, IoU, scores), float64 where it
// computes in float64 (anchors before the final cast, NMS averages, projection).
package glassfinder.core

import kotlin.math.ceil
import kotlin.math.exp
import kotlin.math.max
import kotlin.math.min
import kotlin.math.sqrt

/** detect.BoxFormat: layout of the first four regressor values of each anchor. */
enum class BoxFormat(val value: String) {
    XYWH_CENTER("xywh_center"),  // MediaPipe reverse_output_order: true (BlazeFace)
    YXHW_CENTER("yxhw_center");

    companion object {
        fun of(value: String): BoxFormat = values().firstOrNull { it.value == value }
            ?: throw ConfigException("unknown box_format '$value' (expected one of ${values().map { it.value }})")
    }
}

/** detect.NmsAlgorithm. */
enum class NmsAlgorithm(val value: String) {
    WEIGHTED("weighted"),  // overlapping boxes averaged, weighted by score (MediaPipe WEIGHTED)
    HARD("hard");          // overlapping boxes dropped

    companion object {
        fun of(value: String): NmsAlgorithm = values().firstOrNull { it.value == value }
            ?: throw ConfigException("unknown nms_algorithm '$value' (expected one of ${values().map { it.value }})")
    }
}

/** detect.AnchorOptions (SsdAnchorsCalculator options; defaults: face_detection_short_range, 896 anchors). */
class AnchorOptions(
    val inputSize: Int = 128,
    val numLayers: Int = 4,
    val strides: IntArray = intArrayOf(8, 16, 16, 16),
    val minScale: Double = 0.1484375,
    val maxScale: Double = 0.75,
    val anchorOffset: Double = 0.5,
    val aspectRatios: DoubleArray = doubleArrayOf(1.0),
    val interpolatedScaleAspectRatio: Double = 1.0,
    val fixedAnchorSize: Boolean = true
) {
    companion object {
        /** From AnchorOptions.to_dict() JSON (detect.py names). */
        fun fromJson(o: JsonObject) = AnchorOptions(
            inputSize = o.int("input_size"), numLayers = o.int("num_layers"), strides = o.ints("strides"),
            minScale = o.double("min_scale"), maxScale = o.double("max_scale"),
            anchorOffset = o.double("anchor_offset"), aspectRatios = o.doubles("aspect_ratios"),
            interpolatedScaleAspectRatio = o.double("interpolated_scale_aspect_ratio"),
            fixedAnchorSize = o.bool("fixed_anchor_size"))
    }
}

/** detect.DecodeOptions (TensorsToDetections + NonMaxSuppression options). */
class DecodeOptions(
    val numCoords: Int = 16,
    val boxFormat: BoxFormat = BoxFormat.XYWH_CENTER,
    val numKeypoints: Int = 6,
    val keypointNames: List<String> = listOf("right_eye", "left_eye", "nose_tip", "mouth_centre",
        "right_ear_tragion", "left_ear_tragion"),
    val scale: Double = 128.0,
    val scoreClipping: Double = 100.0,
    val minScore: Double = 0.5,
    val nmsAlgorithm: NmsAlgorithm = NmsAlgorithm.WEIGHTED,
    val nmsIou: Double = 0.3
) {
    companion object {
        /** From DecodeOptions.to_dict() JSON (detect.py names). */
        fun fromJson(o: JsonObject) = DecodeOptions(
            numCoords = o.int("num_coords"), boxFormat = BoxFormat.of(o.string("box_format")),
            numKeypoints = o.int("num_keypoints"), keypointNames = o.strings("keypoint_names"),
            scale = o.double("scale"), scoreClipping = o.double("score_clipping"), minScore = o.double("min_score"),
            nmsAlgorithm = NmsAlgorithm.of(o.string("nms_algorithm")), nmsIou = o.double("nms_iou"))
    }
}

/** detect.Detections: n faces. boxes (n, 4) x0, y0, x1, y1; keypoints (n, k, 2); scores (n,). */
class Detections(val boxes: FloatArray, val keypoints: FloatArray, val scores: FloatArray, val numKeypoints: Int) {
    val size: Int get() = scores.size

    /** (n,) box areas, widths and heights clipped at 0 (float32 as in Python). */
    fun areas(): FloatArray = FloatArray(size) {
        max(boxes[4 * it + 2] - boxes[4 * it], 0f) * max(boxes[4 * it + 3] - boxes[4 * it + 1], 0f)
    }
}

/** The geometry of detect.letterbox: resized size, paste offset and the image -> input matrix. */
class Letterbox(val resizedWidth: Int, val resizedHeight: Int, val offsetX: Int, val offsetY: Int, val matrix: DoubleArray)

/** detect.letterbox without the pixels: fit w x h centred into size x size.
 * The pixels (resize + paste on black) are platform code: android/ImageConversion.kt. */
fun letterbox(width: Int, height: Int, size: Int): Letterbox {
    if (width < 1 || height < 1) throw ImageException("image has an empty size ${width}x$height")
    val s = size.toDouble() / max(width, height)
    // Python's round() ties to even; Math.rint does too (Math.round would not).
    val nw = max(1, Math.rint(width * s).toInt())
    val nh = max(1, Math.rint(height * s).toInt())
    val ox = Math.floorDiv(size - nw, 2)
    val oy = Math.floorDiv(size - nh, 2)
    val A = doubleArrayOf(nw.toDouble() / width, 0.0, ox.toDouble(), 0.0, nh.toDouble() / height, oy.toDouble())
    return Letterbox(nw, nh, ox, oy, A)
}

/** detect.normalize: (h, w, 3) 0..255 -> (h, w, 3) float32 (x / 255 - mean) / std, NHWC. */
fun normalize(pixels: ByteArray, mean: DoubleArray, std: DoubleArray): FloatArray {
    val m = FloatArray(3) { mean[it].toFloat() }
    val s = FloatArray(3) { std[it].toFloat() }
    return FloatArray(pixels.size) {
        val c = it % 3
        ((pixels[it].toInt() and 0xFF).toFloat() / 255f - m[c]) / s[c]
    }
}

private fun calculateScale(minScale: Double, maxScale: Double, i: Int, n: Int): Double =
    if (n == 1) (minScale + maxScale) * 0.5 else minScale + (maxScale - minScale) * i / (n - 1)

/** detect.generate_anchors: SSD anchors (n, 4) x_center, y_center, w, h normalised to the input.
 * Order: feature map, row, column, anchor (the regressor order). */
fun generateAnchors(opts: AnchorOptions = AnchorOptions()): FloatArray {
    val anchors = ArrayList<Float>()
    var layer = 0
    val nStrides = opts.strides.size
    while (layer < opts.numLayers) {
        val scales = ArrayList<Double>()
        val ratios = ArrayList<Double>()
        var last = layer
        // Consecutive layers with the same stride share one feature map.
        while (last < opts.numLayers && opts.strides[last] == opts.strides[layer]) {
            val scale = calculateScale(opts.minScale, opts.maxScale, last, nStrides)
            for (r in opts.aspectRatios) {
                ratios.add(r)
                scales.add(scale)
            }
            if (opts.interpolatedScaleAspectRatio > 0.0) {
                val next = if (last == nStrides - 1) 1.0 else calculateScale(opts.minScale, opts.maxScale, last + 1, nStrides)
                scales.add(sqrt(scale * next))
                ratios.add(opts.interpolatedScaleAspectRatio)
            }
            last += 1
        }
        val stride = opts.strides[layer]
        val fm = ceil(opts.inputSize.toDouble() / stride).toInt()
        for (y in 0 until fm) {
            for (x in 0 until fm) {
                for (j in scales.indices) {
                    val xc = (x + opts.anchorOffset) / fm
                    val yc = (y + opts.anchorOffset) / fm
                    if (opts.fixedAnchorSize) {
                        anchors.add(xc.toFloat()); anchors.add(yc.toFloat()); anchors.add(1f); anchors.add(1f)
                    } else {
                        val r = sqrt(ratios[j])
                        anchors.add(xc.toFloat()); anchors.add(yc.toFloat())
                        anchors.add((scales[j] * r).toFloat()); anchors.add((scales[j] / r).toFloat())
                    }
                }
            }
        }
        layer = last
    }
    return anchors.toFloatArray()
}

/** detect.decode_boxes: every anchor, no thresholding. rawBoxes (n, numCoords), rawScores (n,)
 * logits, anchors (n, 4) -> Detections in normalised input coordinates. */
fun decodeBoxes(rawBoxes: FloatArray, rawScores: FloatArray, anchors: FloatArray, opts: DecodeOptions = DecodeOptions()): Detections {
    val n = anchors.size / 4
    if (rawBoxes.size != n * opts.numCoords || rawScores.size != n || anchors.size != n * 4) {
        throw IllegalArgumentException("decodeBoxes: sizes ${rawBoxes.size}, ${rawScores.size}, ${anchors.size} do not match $n anchors x ${opts.numCoords} coords")
    }
    val k = opts.numKeypoints
    val scale = opts.scale.toFloat()
    val clipping = opts.scoreClipping.toFloat()
    val boxes = FloatArray(n * 4)
    val kps = FloatArray(n * k * 2)
    val scores = FloatArray(n)
    for (i in 0 until n) {
        val r = i * opts.numCoords
        val ax = anchors[4 * i]; val ay = anchors[4 * i + 1]; val aw = anchors[4 * i + 2]; val ah = anchors[4 * i + 3]
        var xc: Float; var yc: Float; var w: Float; var h: Float
        if (opts.boxFormat == BoxFormat.XYWH_CENTER) {
            xc = rawBoxes[r]; yc = rawBoxes[r + 1]; w = rawBoxes[r + 2]; h = rawBoxes[r + 3]
        } else {
            yc = rawBoxes[r]; xc = rawBoxes[r + 1]; h = rawBoxes[r + 2]; w = rawBoxes[r + 3]
        }
        xc = xc / scale * aw + ax
        yc = yc / scale * ah + ay
        w = w / scale * aw
        h = h / scale * ah
        boxes[4 * i] = xc - w / 2f
        boxes[4 * i + 1] = yc - h / 2f
        boxes[4 * i + 2] = xc + w / 2f
        boxes[4 * i + 3] = yc + h / 2f
        for (j in 0 until k) {
            kps[(i * k + j) * 2] = rawBoxes[r + 4 + 2 * j] / scale * aw + ax
            kps[(i * k + j) * 2 + 1] = rawBoxes[r + 5 + 2 * j] / scale * ah + ay
        }
        val logit = min(max(rawScores[i], -clipping), clipping)
        scores[i] = (1.0 / (1.0 + exp(-logit.toDouble()))).toFloat()
    }
    return Detections(boxes, kps, scores, k)
}

/** detect.iou: IoU of box i of `boxes` with every box (float32); 0 where they do not intersect. */
fun iou(box: FloatArray, boxOffset: Int, boxes: FloatArray): FloatArray {
    val bx0 = box[boxOffset]; val by0 = box[boxOffset + 1]; val bx1 = box[boxOffset + 2]; val by1 = box[boxOffset + 3]
    val areaB = max(bx1 - bx0, 0f) * max(by1 - by0, 0f)
    return FloatArray(boxes.size / 4) {
        val x0 = boxes[4 * it]; val y0 = boxes[4 * it + 1]; val x1 = boxes[4 * it + 2]; val y1 = boxes[4 * it + 3]
        val inter = max(min(bx1, x1) - max(bx0, x0), 0f) * max(min(by1, y1) - max(by0, y0), 0f)
        val union = areaB + max(x1 - x0, 0f) * max(y1 - y0, 0f) - inter
        if (union > 0f) inter / max(union, 1e-12f) else 0f
    }
}

/** detect.weighted_nms: keep scores >= minScore, then, best first, gather the boxes whose IoU
 * with the best one is > iouThreshold and replace them by their score-weighted mean (WEIGHTED)
 * or by the best box alone (HARD). The score stays the best one's. Sorted by score, descending. */
fun weightedNms(det: Detections, minScore: Double, iouThreshold: Double, algorithm: NmsAlgorithm = NmsAlgorithm.WEIGHTED): Detections {
    val k = det.numKeypoints
    // numpy 2 compares a float32 array with a Python float in float32 (NEP 50).
    val minS = minScore.toFloat()
    val iouT = iouThreshold.toFloat()
    // Stable sort: equal scores keep their input order (np.argsort(kind="stable")).
    var order = (0 until det.size).filter { det.scores[it] >= minS }.sortedByDescending { det.scores[it] }
    val boxes = ArrayList<Float>()
    val kps = ArrayList<Float>()
    val scores = ArrayList<Float>()
    while (order.isNotEmpty()) {
        val best = order[0]
        val ious = iou(det.boxes, 4 * best, det.boxes)
        // The best box is always in its own group: a zero-area box has IoU 0 with itself and would
        // otherwise never leave `order` (an endless loop).
        val group = order.filter { it == best || ious[it] > iouT }
        order = order.filter { it != best && ious[it] <= iouT }
        if (algorithm == NmsAlgorithm.WEIGHTED) {
            var wsum = 0.0
            val b = DoubleArray(4)
            val p = DoubleArray(2 * k)
            for (g in group) {
                val w = det.scores[g].toDouble()
                wsum += w
                for (c in 0 until 4) b[c] += det.boxes[4 * g + c] * w
                for (c in 0 until 2 * k) p[c] += det.keypoints[2 * k * g + c] * w
            }
            for (c in 0 until 4) boxes.add((b[c] / wsum).toFloat())
            for (c in 0 until 2 * k) kps.add((p[c] / wsum).toFloat())
        } else {
            for (c in 0 until 4) boxes.add(det.boxes[4 * best + c])
            for (c in 0 until 2 * k) kps.add(det.keypoints[2 * k * best + c])
        }
        scores.add(det.scores[best])
    }
    return Detections(boxes.toFloatArray(), kps.toFloatArray(), scores.toFloatArray(), k)
}

/** detect.project: normalised input coordinates -> image pixels, through the inverse letterbox matrix. */
fun project(det: Detections, letterboxMatrix: DoubleArray, inputSize: Int): Detections {
    val inv = invertAffine(letterboxMatrix)
    fun map(src: FloatArray): FloatArray {
        val pts = DoubleArray(src.size) { (src[it] * inputSize).toDouble() }  // float32 product, as numpy
        val out = applyAffine(inv, pts)
        return FloatArray(out.size) { out[it].toFloat() }
    }
    return Detections(map(det.boxes), map(det.keypoints), det.scores.copyOf(), det.numKeypoints)
}

/** detect.tile_windows: overlapping square tiles (k, 3) x0, y0, side for faces too small for the
 * whole-image pass. side = 2 * short side / (rows + 1); tiles overlap by half. */
fun tileWindows(width: Int, height: Int, rows: Int = 2): IntArray {
    val side = maxOf(1, Math.rint(2.0 * minOf(width, height) / (rows + 1)).toInt())  // Python round(): ties to even
    fun starts(length: Int): IntArray {
        val n = if (length <= side) 1 else Math.ceil((length - side) / (side / 2.0)).toInt() + 1
        val stop = maxOf(length - side, 0).toDouble()
        // np.linspace(0, stop, n).round(): i * (stop / (n - 1)), the last one exactly stop, ties to even.
        return IntArray(n) { i -> if (n > 1 && i == n - 1) Math.rint(stop).toInt() else Math.rint(if (n > 1) i * (stop / (n - 1)) else 0.0).toInt() }
    }
    val xs = starts(width)
    val ys = starts(height)
    val out = IntArray(xs.size * ys.size * 3)
    var j = 0
    for (y in ys) for (x in xs) {
        out[j] = x; out[j + 1] = y; out[j + 2] = side
        j += 3
    }
    return out
}

/** detect.merge: detections of several passes (same units) -> one set, overlaps merged. */
fun merge(parts: List<Detections>, iouThreshold: Double, algorithm: NmsAlgorithm = NmsAlgorithm.WEIGHTED): Detections {
    if (parts.isEmpty()) throw IllegalArgumentException("merge needs at least one Detections")
    val k = parts[0].numKeypoints
    val cat = Detections(parts.flatMap { it.boxes.toList() }.toFloatArray(), parts.flatMap { it.keypoints.toList() }.toFloatArray(),
        parts.flatMap { it.scores.toList() }.toFloatArray(), k)
    return weightedNms(cat, Double.NEGATIVE_INFINITY, iouThreshold, algorithm)
}

/** detect.by_prominence: indices from the largest face to the smallest (ties: higher score, then index). */
fun byProminence(det: Detections): IntArray {
    val areas = det.areas()
    // Stable sort, like np.lexsort.
    return (0 until det.size).sortedWith(compareByDescending<Int> { areas[it] }.thenByDescending { det.scores[it] }).toIntArray()
}

/** detect.most_prominent: index of the largest face (ties: higher score); -1 when there is none. */
fun mostProminent(det: Detections): Int = if (det.size == 0) -1 else byProminence(det)[0]

/** detect.postprocess: decodeBoxes -> weightedNms -> project for one image. */
fun postprocess(rawBoxes: FloatArray, rawScores: FloatArray, letterboxMatrix: DoubleArray, inputSize: Int,
                anchors: FloatArray, opts: DecodeOptions): Detections {
    val det = decodeBoxes(rawBoxes, rawScores, anchors, opts)
    return project(weightedNms(det, opts.minScore, opts.nmsIou, opts.nmsAlgorithm), letterboxMatrix, inputSize)
}

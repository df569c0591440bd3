// The float boundaries of the models, the gate decision and the face search. Translation of
// runtime/pipeline.py: preprocess, quantize / dequantize (what TfliteModel.__call__ does at an
// integer model's input and output), softmax, gate_decision, l2_normalize, and the stages over model
// callables (detect_faces, face_mesh, locate_landmarks, find_face), plus the search API's plain types.
package glassfinder.core

import kotlin.math.exp
import kotlin.math.sqrt

/** pipeline.preprocess: (h, w, 3) pixels -> the model's float input, batch of 1.
 * normalization "runtime": (p / 255 - mean) / std, "in_graph": p / 255. Layout NHWC or NCHW. */
fun preprocess(pixels: ByteArray, height: Int, width: Int, spec: InputSpec): FloatArray {
    val x = if (spec.normalization == "runtime") normalize(pixels, spec.mean, spec.std)
            else FloatArray(pixels.size) { (pixels[it].toInt() and 0xFF).toFloat() / 255f }
    if (spec.layout != "NCHW") return x
    val out = FloatArray(x.size)
    for (i in 0 until height * width) for (c in 0 until 3) out[c * height * width + i] = x[3 * i + c]
    return out
}

/** pipeline.quantize: float -> int8/uint8 (dtype "int8" or "uint8") with the tensor's own scale and zero
 * point: clip(round(x / scale) + zeroPoint) in float32, rounding half to EVEN (numpy's np.round;
 * TFLite's own quantizer would round half away). Returns the integer values (-128..127 or 0..255). */
fun quantize(x: FloatArray, scale: Double, zeroPoint: Int, dtype: String): IntArray {
    val (lo, hi) = when (dtype) {
        "int8" -> -128f to 127f
        "uint8" -> 0f to 255f
        else -> throw IllegalArgumentException("quantize: dtype must be int8 or uint8, got $dtype")
    }
    val s = scale.toFloat()  // numpy 2: float32 array / Python float stays float32
    return IntArray(x.size) {
        val r = Math.rint((x[it] / s).toDouble()).toFloat() + zeroPoint
        (if (r < lo) lo else if (r > hi) hi else r).toInt()
    }
}

/** pipeline.dequantize: int8/uint8 values -> float32 (q - zeroPoint) * scale. */
fun dequantize(q: IntArray, scale: Double, zeroPoint: Int): FloatArray {
    val s = scale.toFloat()
    return FloatArray(q.size) { (q[it] - zeroPoint).toFloat() * s }
}

/** pipeline.softmax: in float64, returned as float32. */
fun softmax(logits: FloatArray): FloatArray {
    val m = logits.max() ?: return FloatArray(0)
    val e = DoubleArray(logits.size) { exp(logits[it].toDouble() - m) }
    val s = e.sum()
    return FloatArray(e.size) { (e[it] / s).toFloat() }
}

/** pipeline.l2_normalize: each row of x (n, d) divided by max(||row||, eps), float32. */
fun l2Normalize(x: FloatArray, d: Int, eps: Float = 1e-12f): FloatArray {
    val out = FloatArray(x.size)
    for (i in 0 until x.size / d) {
        var s = 0f
        for (j in 0 until d) s += x[i * d + j] * x[i * d + j]
        val norm = maxOf(sqrt(s.toDouble()).toFloat(), eps)
        for (j in 0 until d) out[i * d + j] = x[i * d + j] / norm
    }
    return out
}

/** pipeline.gate_decision: (accepted, P(glasses)). softmax of the gate's logits; P(glasses) is the
 * float32 sum of the accept classes' probabilities (numpy sums the float32 slice in float32, in
 * `accept` order); accepted when it is >= threshold. */
fun gateDecision(logits: FloatArray, accept: IntArray, threshold: Double): Pair<Boolean, Double> {
    val probs = softmax(logits)
    var p = 0f
    for (j in accept) p += probs[j]
    return (p.toDouble() >= threshold) to p.toDouble()
}

/** GlassFinder.accept: indices of the manifest's accept classes, in accept_classes order. */
fun acceptIndices(settings: GateSettings): IntArray = IntArray(settings.acceptClasses.size) {
    val i = settings.classNames.indexOf(settings.acceptClasses[it])
    if (i < 0) throw ConfigException("gate: accept class '${settings.acceptClasses[it]}' is not in ${settings.classNames}")
    i
}

/** The gate's verdict on one crop (GlassFinder.gate_crop): accepted, P(glasses), and every class's probability. */
class GateDecision(val accepted: Boolean, val pGlasses: Double, val probabilities: Map<String, Float>)

/** GlassFinder.gate_crop after the model: gateDecision on the logits plus the class probabilities by name. */
fun gate(logits: FloatArray, settings: GateSettings): GateDecision {
    if (logits.size != settings.classNames.size) {
        throw IllegalArgumentException("gate: ${logits.size} outputs for ${settings.classNames.size} classes")
    }
    val (accepted, p) = gateDecision(logits, acceptIndices(settings), settings.threshold)
    val probs = softmax(logits)
    val byName = LinkedHashMap<String, Float>()
    for ((i, name) in settings.classNames.withIndex()) byName[name] = probs[i]
    return GateDecision(accepted, p, byName)
}

// ---- Stages as pure functions over model callables (pipeline.detect_faces ... find_face) ----

/** pipeline.ModelFn: (h, w, 3) pixels -> the model's raw float outputs in manifest order. */
typealias ModelFn = (RgbImage) -> List<FloatArray>

/** A rectangle of the photo, image pixels (what pipeline.detect_faces crops for a tile). */
class Region(val x0: Int, val y0: Int, val width: Int, val height: Int)

/** The detector as a ModelFn over a region of the photo: letterbox the region's pixels to the input
 * size at the geometry `letterbox` gives (platform code: android/ImageConversion.kt, not Pillow's
 * resampler), run the model, return its raw outputs [regressors (n * numCoords), scores (n)]. */
typealias DetectorFn = (region: Region, letterbox: Letterbox) -> List<FloatArray>

/** pipeline.FaceSearchOptions: how hard to look for a face. */
class FaceSearchOptions(
    val refine: Int = 1,        // extra aligner passes from the previous mesh
    val tileRows: Int = 2,      // tiled second detector pass when the whole photo gives no confirmed face; 0 = never
    val maxCandidates: Int = 4  // detections tried per pass, largest first
) {
    init {
        // Python does not check these; a negative max_candidates would slice off the last candidates there.
        if (refine < 0) throw ConfigException("refine must be an integer >= 0, got $refine")
        if (tileRows < 0) throw ConfigException("tileRows must be an integer >= 0, got $tileRows")
        if (maxCandidates < 0) throw ConfigException("maxCandidates must be an integer >= 0, got $maxCandidates")
    }
}

/** pipeline.detect_faces: all faces of `region` in its own pixels: letterbox -> detector -> decode ->
 * weighted NMS -> project. tileRows > 0: run on overlapping square tiles (tileWindows) and merge,
 * for faces too small for the whole-photo pass. */
fun detectFaces(region: Region, runDetector: DetectorFn, spec: DetectorSettings, anchors: FloatArray, tileRows: Int = 0): Detections {
    val size = spec.anchors.inputSize
    if (tileRows <= 0) {
        val lb = letterbox(region.width, region.height, size)
        val raw = runDetector(region, lb)
        return postprocess(raw[0], raw[1], lb.matrix, size, anchors, spec.decode)
    }
    val parts = ArrayList<Detections>()
    val tiles = tileWindows(region.width, region.height, tileRows)
    for (t in 0 until tiles.size / 3) {
        val x0 = tiles[3 * t]
        val y0 = tiles[3 * t + 1]
        val side = tiles[3 * t + 2]
        val part = detectFaces(Region(region.x0 + x0, region.y0 + y0, side, side), runDetector, spec, anchors)
        // Tile pixels -> region pixels (float32 additions, as numpy's part.boxes + shift).
        val sx = x0.toFloat()
        val sy = y0.toFloat()
        parts.add(Detections(FloatArray(part.boxes.size) { part.boxes[it] + if (it % 2 == 0) sx else sy },
            FloatArray(part.keypoints.size) { part.keypoints[it] + if (it % 2 == 0) sx else sy },
            part.scores, part.numKeypoints))
    }
    return merge(parts, spec.decode.nmsIou, spec.decode.nmsAlgorithm)
}

/** pipeline.face_mesh: (numLandmarks * 3) image-pixel mesh and face-presence score for one rotated face roi. */
fun faceMesh(image: RgbImage, roi: FaceRoi, runAligner: ModelFn, opts: MeshOptions): Pair<FloatArray, Double> {
    val A = roiMatrix(roi, opts.inputSize)
    val out = runAligner(cropFace(image, A, opts.inputSize))
    return decodeLandmarks(out[0], A, opts.numLandmarks) to presenceScore(out[1][0])
}

/** pipeline.locate_landmarks: mesh of detection i after `refine` re-crops from the mesh (MediaPipe's
 * tracking roi, tighter on tilted heads), and the best presence score of all passes. The re-crops
 * always run: on blurred, dark or small faces the detector's loose roi often scores below the
 * threshold while the re-crop centred on the mesh clears it. */
fun locateLandmarks(image: RgbImage, det: Detections, i: Int, runAligner: ModelFn, opts: MeshOptions,
                    refine: Int = 1): Pair<FloatArray, Double> {
    val k = det.numKeypoints
    fun kp(j: Int) = doubleArrayOf(det.keypoints[2 * (i * k + j)].toDouble(), det.keypoints[2 * (i * k + j) + 1].toDouble())
    val box = DoubleArray(4) { det.boxes[4 * i + it].toDouble() }
    val roi = faceRoi(box, kp(RIGHT_EYE), kp(LEFT_EYE), opts.roiScale)
    var (mesh, best) = faceMesh(image, roi, runAligner, opts)
    for (pass in 0 until refine) {
        val next = faceMesh(image, roiFromMesh(mesh, opts.roiScale), runAligner, opts)
        mesh = next.first
        best = maxOf(best, next.second)
    }
    return mesh to best
}

/** detect.FaceKeypoint indices of the eyes in the detector's keypoints. */
const val RIGHT_EYE = 0
const val LEFT_EYE = 1

/** pipeline.find_face's result: detections of the pass that confirmed a face (the whole-photo ones
 * if none did), the index of the chosen face or -1, its mesh (numLandmarks * 3) or null, its presence. */
class FoundFace(val detections: Detections, val index: Int, val mesh: FloatArray?, val presence: Double)

/** pipeline.find_face: the largest detection the aligner confirms (presence >= threshold), from the
 * whole-photo pass, else from the tiled pass. `timings` accumulates seconds in "detect" and "align". */
fun findFace(image: RgbImage, runDetector: DetectorFn, runAligner: ModelFn, spec: DetectorSettings, anchors: FloatArray,
             meshOpts: MeshOptions, opts: FaceSearchOptions = FaceSearchOptions(),
             timings: MutableMap<String, Double>? = null): FoundFace {
    val t = timings ?: HashMap()
    var whole: Detections? = null
    for (tileRows in if (opts.tileRows > 0) intArrayOf(0, opts.tileRows) else intArrayOf(0)) {
        var t0 = System.nanoTime()
        val det = detectFaces(Region(0, 0, image.width, image.height), runDetector, spec, anchors, tileRows)
        t["detect"] = (t["detect"] ?: 0.0) + (System.nanoTime() - t0) / 1e9
        if (whole == null) whole = det
        t0 = System.nanoTime()
        try {
            for (i in byProminence(det).take(opts.maxCandidates)) {
                val (mesh, presence) = locateLandmarks(image, det, i, runAligner, meshOpts, opts.refine)
                if (presence >= meshOpts.presenceThreshold) return FoundFace(det, i, mesh, presence)
            }
        } finally {
            t["align"] = (t["align"] ?: 0.0) + (System.nanoTime() - t0) / 1e9
        }
    }
    return FoundFace(whole!!, -1, null, 0.0)
}

// ---- The search API's plain types (pipeline.SearchOptions, SkuHit, SearchResult) ----

/** pipeline.SearchOptions: runtime knobs; the models' own settings come from the manifest. */
class SearchOptions(
    val topK: Int = 10,                              // results returned
    val numThreads: Int = 1,                         // interpreter threads per model
    val face: FaceSearchOptions = FaceSearchOptions() // how hard to look for a face
) {
    init {
        if (topK < 1) throw ConfigException("topK must be an integer >= 1, got $topK")
        if (numThreads < 1) throw ConfigException("numThreads must be an integer >= 1, got $numThreads")
    }
}

/** pipeline.SkuHit: score is the cosine similarity (inner product of unit vectors), higher is closer. */
class SkuHit(val sku: String, val name: String, val score: Float, val index: Int)

/** pipeline.SearchResult: status "ok" (results holds the top-k) or "rejected" (reason no_face | no_glasses). */
class SearchResult(val status: String, val message: String, val reason: String?, val faces: Int,
                   val gateProbs: Map<String, Float>, val results: List<SkuHit>)

/** pipeline.read_sku_metadata: {"skus": [{"sku", "name", ...}, ...]} indexed by gallery id. */
fun readSkuMetadata(json: String, n: Int, source: String): List<SkuHit> {
    val o = try { JsonObject.parse(json, source) } catch (e: JsonException) { throw BundleException("$source: not a SKU list (${e.message})") }
    val skus = try { o.objects("skus").map { SkuHit(it.string("sku"), it.string("name"), 0f, -1) } } catch (e: JsonException) {
        throw BundleException("$source: not a SKU list (${e.message})")
    }
    if (skus.size != n) throw BundleException("$source: ${skus.size} SKUs listed but the gallery holds $n vectors")
    return skus
}

/** The rejection message of GlassFinder._rejected. */
fun refusal(settings: GateSettings, reason: String): String =
    settings.refusalMessage + if (reason == "no_face") " (no face was found)" else " (no glasses are worn on the face)"

// Golden-vector check of the plain-Kotlin core against the Python reference runtime.
//
//   java -jar golden-check.jar tests/fixtures/golden/golden.txt
//
// Runs every stage of glassfinder.core on the inputs stored in golden.txt (written by
// glassfinder_runtime.golden) and compares with the stored outputs: integers (ids, codes, ranks,
// counts, pixels) exactly, floats within the named tolerances below. Prints one line per stage
// (values compared, max error) and "N passed, M failed"; exits 1 on any failure.
package glassfinder

import glassfinder.core.*
import java.io.File
import kotlin.system.exitProcess

// ---- Named tolerances (absolute). Same names in ios_stub/Tests/GlassFinderTests/GoldenTests.swift. ----
/** Letterbox matrix: the same float64 formula -> equal up to rounding. */
const val LETTERBOX_TOL = 1e-12
/** (x / 255 - mean) / std in float32. */
const val NORMALIZE_TOL = 1e-6
/** Anchors: float64 formula cast to float32; one float32 ulp of values <= 1. */
const val ANCHOR_TOL = 1e-7
/** Decoded boxes/keypoints (normalised, float32) and sigmoid scores (exp may differ by an ulp). */
const val DECODE_TOL = 1e-6
/** IoU and NMS outputs (float32 inputs, float64 weighted means). */
const val NMS_TOL = 1e-6
/** Projected boxes/keypoints in image pixels (float32 of values up to ~1000). */
const val PROJECT_TOL = 1e-4
/** Similarity matrices (float64; Python uses an SVD, Kotlin the closed form). */
const val SIMILARITY_TOL = 1e-9
/** apply/invert affine (float64; numpy's LAPACK inverse vs the closed form). */
const val AFFINE_TOL = 1e-9
/** Mesh in image pixels (float32 of values up to ~1000) and roi values. */
const val LANDMARK_TOL = 1e-4
/** Dequantized int8 values (float32 (q - zp) * scale). */
const val INT8_TOL = 1e-7
/** Softmax probabilities and summed accept scores (float64 exp, float32 results). */
const val GATE_TOL = 1e-6
/** Unit vectors (float32; numpy sums the squares pairwise). */
const val L2_TOL = 1e-6
/** PQ lookup tables and distances (float32 sums; numpy's einsum order differs). */
const val PQ_TOL = 1e-5
/** Refine(SQ8) re-ranked scores: float32 sums of d = 16 products scale * code * q (numpy's einsum
 * sums in another order); absolute, the scores are below 10. */
const val REFINE_TOL = 1e-5
/** Mean pixel of each aligner crop in findFace: the crops are byte-identical, so the means are equal. */
const val CROP_MEAN_TOL = 0.0

class Checker {
    var passed = 0
    var failed = 0
    var values = 0L
    private val stageValues = LinkedHashMap<String, Long>()
    private val stageMaxErr = LinkedHashMap<String, Double>()

    private fun record(stage: String, name: String, n: Int, err: Double, ok: Boolean, detail: String) {
        values += n
        stageValues[stage] = (stageValues[stage] ?: 0L) + n
        stageMaxErr[stage] = maxOf(stageMaxErr[stage] ?: 0.0, err)
        if (ok) passed += 1 else {
            failed += 1
            println("FAIL $name: $detail")
        }
    }

    fun floats(stage: String, name: String, expected: DoubleArray, actual: DoubleArray, tol: Double) {
        if (expected.size != actual.size) {
            record(stage, name, 0, 0.0, false, "size ${actual.size}, expected ${expected.size}")
            return
        }
        var maxErr = 0.0
        var worst = -1
        for (i in expected.indices) {
            val e = expected[i]
            val a = actual[i]
            val err = if (e == a) 0.0 else if (e.isInfinite() || a.isInfinite() || e.isNaN() || a.isNaN()) Double.POSITIVE_INFINITY else Math.abs(e - a)
            if (err > maxErr || worst < 0 && err > tol) { maxErr = err; worst = i }
        }
        val ok = maxErr <= tol
        record(stage, name, expected.size, maxErr, ok,
            if (ok) "" else "max error $maxErr > $tol at [$worst]: got ${actual[worst]}, expected ${expected[worst]}")
    }

    fun floats(stage: String, name: String, expected: DoubleArray, actual: FloatArray, tol: Double) =
        floats(stage, name, expected, DoubleArray(actual.size) { actual[it].toDouble() }, tol)

    fun ints(stage: String, name: String, expected: LongArray, actual: LongArray) {
        if (expected.size != actual.size) {
            record(stage, name, 0, 0.0, false, "size ${actual.size}, expected ${expected.size}")
            return
        }
        val bad = expected.indices.filter { expected[it] != actual[it] }
        record(stage, name, expected.size, 0.0, bad.isEmpty(),
            "${bad.size} of ${expected.size} differ, first at [${bad.firstOrNull()}]: got ${bad.firstOrNull()?.let { actual[it] }}, expected ${bad.firstOrNull()?.let { expected[it] }}")
    }

    fun ints(stage: String, name: String, expected: LongArray, actual: IntArray) =
        ints(stage, name, expected, LongArray(actual.size) { actual[it].toLong() })

    fun ints(stage: String, name: String, expected: LongArray, actual: ByteArray) =
        ints(stage, name, expected, LongArray(actual.size) { actual[it].toLong() and 0xFF })

    fun check(stage: String, name: String, ok: Boolean, detail: String) = record(stage, name, 1, 0.0, ok, detail)

    fun report() {
        println(String.format("%-12s %8s  %s", "stage", "values", "max abs error"))
        for ((stage, n) in stageValues) println(String.format("%-12s %8d  %.3e", stage, n, stageMaxErr[stage]))
        println("$values values compared")
        println("$passed passed, $failed failed")
    }
}

fun image(b: GoldenBlock): RgbImage = RgbImage(b.shape[1], b.shape[0], b.bytes())

fun checkImageLimits(g: Golden, c: Checker) {
    val limits = ImageLimits()
    c.floats("image_limits", "image_limits.values", g["image_limits.values"].doubles(),
        doubleArrayOf(limits.maxPixels.toDouble(), limits.minSide.toDouble(), limits.maxAspect), 0.0)
    val sizes = g["image_limits.sizes"].ints()
    val accepted = IntArray(sizes.size / 2) {
        try { limits.check(sizes[2 * it], sizes[2 * it + 1]); 1 } catch (e: ImageException) { 0 }
    }
    c.ints("image_limits", "image_limits.accepted", g["image_limits.accepted"].longs(), accepted)
}

fun checkDetect(g: Golden, c: Checker) {
    val size = g["letterbox.input_size"].ints()[0]
    val sizes = g["letterbox.image_sizes"].ints()
    val mats = g["letterbox.matrices"].doubles()
    for (i in 0 until sizes.size / 2) {
        val lb = letterbox(sizes[2 * i], sizes[2 * i + 1], size)
        c.floats("letterbox", "letterbox[$i] ${sizes[2 * i]}x${sizes[2 * i + 1]}", mats.copyOfRange(6 * i, 6 * i + 6), lb.matrix, LETTERBOX_TOL)
    }
    val cases = g["tiles.cases"].ints()
    val counts = g["tiles.counts"].ints()
    val windows = g["tiles.windows"].longs()
    var offset = 0
    for (i in counts.indices) {
        val t = tileWindows(cases[3 * i], cases[3 * i + 1], cases[3 * i + 2])
        c.ints("tiles", "tiles[$i] ${cases[3 * i]}x${cases[3 * i + 1]}", windows.copyOfRange(3 * offset, 3 * (offset + counts[i])), t)
        offset += counts[i]
    }
    val px = g["normalize.pixels"].bytes()
    for (tag in listOf("half", "imagenet")) {
        val out = normalize(px, g["normalize.$tag.mean"].doubles(), g["normalize.$tag.std"].doubles())
        c.floats("normalize", "normalize.$tag", g["normalize.$tag.out"].doubles(), out, NORMALIZE_TOL)
    }
    for (tag in listOf("default", "alt")) {
        val opts = AnchorOptions.fromJson(JsonObject.parse(g.text("anchors.$tag.options"), "anchors.$tag.options"))
        c.floats("anchors", "anchors.$tag", g["anchors.$tag"].doubles(), generateAnchors(opts), ANCHOR_TOL)
    }
    for (tag in listOf("xywh", "yxhw")) {
        val p = "decode.$tag"
        val opts = DecodeOptions.fromJson(JsonObject.parse(g.text("$p.options"), "$p.options"))
        val det = decodeBoxes(g["$p.raw_boxes"].floats(), g["$p.raw_scores"].floats(), g["$p.anchors"].floats(), opts)
        c.floats("decode", "$p.boxes", g["$p.boxes"].doubles(), det.boxes, DECODE_TOL)
        c.floats("decode", "$p.keypoints", g["$p.keypoints"].doubles(), det.keypoints, DECODE_TOL)
        c.floats("decode", "$p.scores", g["$p.scores"].doubles(), det.scores, DECODE_TOL)
    }
    val k = g["nms.keypoints"].shape[1]
    val det = Detections(g["nms.boxes"].floats(), g["nms.keypoints"].floats(), g["nms.scores"].floats(), k)
    c.floats("nms", "nms.iou_first", g["nms.iou_first"].doubles(), iou(det.boxes, 0, det.boxes), NMS_TOL)
    val minScore = g["nms.min_score"].doubles()[0]
    val iouThr = g["nms.iou_threshold"].doubles()[0]
    var weighted: Detections? = null
    for ((tag, algo) in listOf("weighted" to NmsAlgorithm.WEIGHTED, "hard" to NmsAlgorithm.HARD)) {
        val out = weightedNms(det, minScore, iouThr, algo)
        if (algo == NmsAlgorithm.WEIGHTED) weighted = out
        c.ints("nms", "nms.$tag.count", g["nms.$tag.count"].longs(), longArrayOf(out.size.toLong()))
        c.floats("nms", "nms.$tag.boxes", g["nms.$tag.boxes"].doubles(), out.boxes, NMS_TOL)
        c.floats("nms", "nms.$tag.keypoints", g["nms.$tag.keypoints"].doubles(), out.keypoints, NMS_TOL)
        c.floats("nms", "nms.$tag.scores", g["nms.$tag.scores"].doubles(), out.scores, NMS_TOL)
        if (algo == NmsAlgorithm.HARD) {
            // HARD keeps input rows unchanged: find their input positions (exact).
            val keep = IntArray(out.size) { r ->
                (0 until det.size).first { i -> (0 until 4).all { det.boxes[4 * i + it] == out.boxes[4 * r + it] } }
            }
            c.ints("nms", "nms.hard.keep", g["nms.hard.keep"].longs(), keep)
        }
    }
    c.ints("nms", "nms.weighted.most_prominent", g["nms.weighted.most_prominent"].longs(), intArrayOf(mostProminent(weighted!!)))
    c.ints("nms", "nms.by_prominence", g["nms.by_prominence"].longs(), byProminence(det))
    val half = g["nms.merge.split"].ints()[0]
    fun part(from: Int, to: Int) = Detections(det.boxes.copyOfRange(4 * from, 4 * to), det.keypoints.copyOfRange(2 * k * from, 2 * k * to),
        det.scores.copyOfRange(from, to), k)
    val merged = merge(listOf(part(0, half), part(half, det.size)), iouThr)
    c.floats("nms", "nms.merge.boxes", g["nms.merge.boxes"].doubles(), merged.boxes, NMS_TOL)
    c.floats("nms", "nms.merge.keypoints", g["nms.merge.keypoints"].doubles(), merged.keypoints, NMS_TOL)
    c.floats("nms", "nms.merge.scores", g["nms.merge.scores"].doubles(), merged.scores, NMS_TOL)
    val proj = project(weighted, g["project.letterbox_matrix"].doubles(), g["project.input_size"].ints()[0])
    c.floats("project", "project.boxes", g["project.boxes"].doubles(), proj.boxes, PROJECT_TOL)
    c.floats("project", "project.keypoints", g["project.keypoints"].doubles(), proj.keypoints, PROJECT_TOL)
}

fun checkGeometry(g: Golden, c: Checker) {
    val template = CropTemplate.fromJson(JsonObject.parse(g.text("similarity.template"), "similarity.template"))
    val kps = g["similarity.keypoints"].doubles()
    val mats = g["similarity.crop_matrices"].doubles()
    for (i in 0 until kps.size / 10) {
        c.floats("similarity", "similarity.crop_matrices[$i]", mats.copyOfRange(6 * i, 6 * i + 6),
            cropMatrix(kps.copyOfRange(10 * i, 10 * i + 10), template), SIMILARITY_TOL)
    }
    for (n in listOf(2, 7)) {
        val m = estimateSimilarity(g["similarity.n$n.src"].doubles(), g["similarity.n$n.dst"].doubles())
        c.floats("similarity", "similarity.n$n.matrix", g["similarity.n$n.matrix"].doubles(), m, SIMILARITY_TOL)
    }
    val A = g["affine.matrix"].doubles()
    c.floats("affine", "affine.applied", g["affine.applied"].doubles(), applyAffine(A, g["affine.points"].doubles()), AFFINE_TOL)
    c.floats("affine", "affine.inverse", g["affine.inverse"].doubles(), invertAffine(A), AFFINE_TOL)

    val img = image(g["warp.image"])
    val size = g["warp.size"].ints()
    val wm = g["warp.matrices"].doubles()
    val outs = g["warp.outputs"].longs()
    val n = size[0] * size[1] * 3
    for (i in 0 until wm.size / 6) {
        val out = warpAffine(img, wm.copyOfRange(6 * i, 6 * i + 6), size[0], size[1])
        c.ints("warp", "warp.outputs[$i]", outs.copyOfRange(n * i, n * i + n), out.pixels)
    }
    val big = image(g["warp.prefiltered.image"])
    c.ints("warp", "warp.reduce3", g["warp.reduce3"].longs(), reduce(big, 3).pixels)
    val ps = g["warp.prefiltered.size"].ints()[0]
    val pm = g["warp.prefiltered.matrices"].doubles()
    val pouts = g["warp.prefiltered.outputs"].longs()
    val pn = ps * ps * 3
    for (i in 0 until pm.size / 6) {
        val out = cropFace(big, pm.copyOfRange(6 * i, 6 * i + 6), ps)
        c.ints("warp", "warp.prefiltered.outputs[$i]", pouts.copyOfRange(pn * i, pn * i + pn), out.pixels)
    }
    val t = CropTemplate.fromJson(JsonObject.parse(g.text("align_crop.template"), "align_crop.template"))
    val aligned = alignCrop(image(g["align_crop.image"]), g["align_crop.keypoints"].doubles(), t)
    c.floats("align_crop", "align_crop.matrix", g["align_crop.matrix"].doubles(), aligned.matrix, SIMILARITY_TOL)
    c.ints("align_crop", "align_crop.crop", g["align_crop.crop"].longs(), aligned.crop.pixels)
}

fun checkLandmarks(g: Golden, c: Checker) {
    val opts = MeshOptions.fromJson(JsonObject.parse(g.text("landmarks.options"), "landmarks.options"))
    val eyes = g["landmarks.eyes"].doubles()
    val roi = faceRoi(g["landmarks.box"].doubles(), eyes.copyOfRange(0, 2), eyes.copyOfRange(2, 4), opts.roiScale)
    c.floats("landmarks", "landmarks.roi", g["landmarks.roi"].doubles(), doubleArrayOf(roi.cx, roi.cy, roi.side, roi.angle), LANDMARK_TOL)
    val A = roiMatrix(roi, opts.inputSize)
    c.floats("landmarks", "landmarks.roi_matrix", g["landmarks.roi_matrix"].doubles(), A, AFFINE_TOL)
    val mesh = decodeLandmarks(g["landmarks.raw"].floats(), A, opts.numLandmarks)
    c.floats("landmarks", "landmarks.mesh", g["landmarks.mesh"].doubles(), mesh, LANDMARK_TOL)
    c.floats("landmarks", "landmarks.glasses_keypoints", g["landmarks.glasses_keypoints"].doubles(), glassesKeypoints(mesh, opts), LANDMARK_TOL)
    val r2 = roiFromMesh(mesh, opts.roiScale)
    c.floats("landmarks", "landmarks.roi_from_mesh", g["landmarks.roi_from_mesh"].doubles(), doubleArrayOf(r2.cx, r2.cy, r2.side, r2.angle), LANDMARK_TOL)
    val flags = g["landmarks.face_flags"].floats()
    c.floats("landmarks", "landmarks.presence", g["landmarks.presence"].doubles(), DoubleArray(flags.size) { presenceScore(flags[it]) }, 1e-12)
}

fun checkPipeline(g: Golden, c: Checker) {
    val px = g["preprocess.pixels"]
    for (tag in listOf("nhwc_runtime", "nchw_in_graph")) {
        val spec = Manifest.parseInput(JsonObject.parse(g.text("preprocess.$tag.spec"), "preprocess.$tag.spec"))
        c.floats("preprocess", "preprocess.$tag", g["preprocess.$tag.out"].doubles(), preprocess(px.bytes(), px.shape[0], px.shape[1], spec), NORMALIZE_TOL)
    }
    for (tag in listOf("ties", "random", "uint8")) {
        val qp = g["int8.$tag.quant"].doubles()
        val q = quantize(g["int8.$tag.x"].floats(), qp[0], qp[1].toInt(), g.text("int8.$tag.dtype"))
        c.ints("int8", "int8.$tag.q", g["int8.$tag.q"].longs(), q)
        c.floats("int8", "int8.$tag.dequantized", g["int8.$tag.dequantized"].doubles(), dequantize(q, qp[2], qp[3].toInt()), INT8_TOL)
    }
    val settings = Manifest.parse(g.text("manifest.json")).gate!!
    val accept = g["gate.accept"].ints()
    c.ints("gate", "gate.accept (manifest)", g["gate.accept"].longs(), acceptIndices(settings))
    val threshold = g["gate.threshold"].doubles()[0]
    c.floats("gate", "gate.threshold (manifest)", g["gate.threshold"].doubles(), doubleArrayOf(settings.threshold), 0.0)
    val logits = g["gate.logits"].floats()
    val n = g["gate.logits"].shape[1]
    val probs = FloatArray(logits.size)
    val pGlasses = DoubleArray(logits.size / n)
    val accepted = LongArray(logits.size / n)
    for (r in 0 until logits.size / n) {
        val row = logits.copyOfRange(r * n, r * n + n)
        softmax(row).copyInto(probs, r * n)
        val (ok, p) = gateDecision(row, accept, threshold)
        pGlasses[r] = p
        accepted[r] = if (ok) 1L else 0L
        val viaSettings = gate(row, settings)
        c.check("gate", "gate(settings)[$r] agrees with gateDecision", viaSettings.accepted == ok && viaSettings.pGlasses == p,
            "gate() gave ${viaSettings.accepted}/${viaSettings.pGlasses}, gateDecision $ok/$p")
    }
    c.floats("gate", "gate.probs", g["gate.probs"].doubles(), probs, GATE_TOL)
    c.floats("gate", "gate.p_glasses", g["gate.p_glasses"].doubles(), pGlasses, GATE_TOL)
    c.ints("gate", "gate.accepted", g["gate.accepted"].longs(), accepted)
    val x = g["l2_normalize.x"]
    c.floats("l2_normalize", "l2_normalize.out", g["l2_normalize.out"].doubles(), l2Normalize(x.floats(), x.shape[1]), L2_TOL)
}

/** pipeline.find_face over the fake models golden.py describes: a detector returning the listed raw rows
 * on its c-th call (every other anchor: zeros and the background logit), an aligner returning a fixed
 * raw mesh (moved by the case's fake_aligner.shift, crop pixels) and a face flag from its crop's mean pixel. */
fun checkFindFace(g: Golden, c: Checker) {
    val image = image(g["find_face.image"])
    val spec = DetectorSettings(AnchorOptions.fromJson(JsonObject.parse(g.text("find_face.anchor_options"), "find_face.anchor_options")),
        DecodeOptions.fromJson(JsonObject.parse(g.text("find_face.decode_options"), "find_face.decode_options")))
    val meshOpts = MeshOptions.fromJson(JsonObject.parse(g.text("find_face.mesh_options"), "find_face.mesh_options"))
    val anchors = generateAnchors(spec.anchors)
    val numAnchors = anchors.size / 4
    val numCoords = spec.decode.numCoords
    val background = g["find_face.fake_detector.background_logit"].floats()[0]
    val flag = g["find_face.fake_aligner.flag"].doubles()
    val rawMesh = g["find_face.fake_aligner.raw"].floats()
    for (tag in listOf("whole", "tiled", "none", "recrop")) {
        val p = "find_face.$tag"
        val o = g["$p.options"].ints()
        val shift = g["$p.fake_aligner.shift"].floats()
        val caseMesh = FloatArray(rawMesh.size) { if (it % 3 < 2) rawMesh[it] + shift[it % 3] else rawMesh[it] }  // x, y moved
        val calls = g["$p.fake_detector.call"].ints()
        val anchorIdx = g["$p.fake_detector.anchor"].ints()
        val raw = g["$p.fake_detector.raw"].floats()
        val rowLogits = g["$p.fake_detector.logit"].floats()
        var detectorCalls = 0
        val regions = ArrayList<Region>()
        val runDetector: DetectorFn = { region, _ ->
            val boxes = FloatArray(numAnchors * numCoords)
            val scores = FloatArray(numAnchors) { background }
            for (r in calls.indices) if (calls[r] == detectorCalls) {
                System.arraycopy(raw, r * numCoords, boxes, anchorIdx[r] * numCoords, numCoords)
                scores[anchorIdx[r]] = rowLogits[r]
            }
            detectorCalls += 1
            regions.add(region)
            listOf(boxes, scores)
        }
        val means = ArrayList<Double>()
        val runAligner: ModelFn = { crop ->
            var sum = 0L
            for (b in crop.pixels) sum += (b.toInt() and 0xFF)
            val mean = sum.toDouble() / crop.pixels.size
            means.add(mean)
            listOf(caseMesh, floatArrayOf(((mean - flag[0]) / flag[1]).toFloat()))
        }
        val found = findFace(image, runDetector, runAligner, spec, anchors, meshOpts, FaceSearchOptions(o[0], o[1], o[2]))
        c.ints("find_face", "$p.detector_calls", g["$p.detector_calls"].longs(), intArrayOf(detectorCalls))
        // The detector saw the whole photo first, then the tiles of tileWindows, in order.
        val tiles = if (o[1] > 0) tileWindows(image.width, image.height, o[1]) else IntArray(0)
        val expected = listOf(listOf(0, 0, image.width, image.height)) + (0 until tiles.size / 3).map { listOf(tiles[3 * it], tiles[3 * it + 1], tiles[3 * it + 2], tiles[3 * it + 2]) }
        c.check("find_face", "$p detector regions", regions.map { listOf(it.x0, it.y0, it.width, it.height) } == expected.take(regions.size),
            "regions ${regions.map { listOf(it.x0, it.y0, it.width, it.height) }}")
        c.floats("find_face", "$p.aligner_means", g["$p.aligner_means"].doubles(), means.toDoubleArray(), CROP_MEAN_TOL)
        c.floats("find_face", "$p.boxes", g["$p.boxes"].doubles(), found.detections.boxes, PROJECT_TOL)
        c.floats("find_face", "$p.keypoints", g["$p.keypoints"].doubles(), found.detections.keypoints, PROJECT_TOL)
        c.floats("find_face", "$p.scores", g["$p.scores"].doubles(), found.detections.scores, DECODE_TOL)
        c.ints("find_face", "$p.index", g["$p.index"].longs(), intArrayOf(found.index))
        c.floats("find_face", "$p.presence", g["$p.presence"].doubles(), doubleArrayOf(found.presence), GATE_TOL)
        c.floats("find_face", "$p.mesh", g["$p.mesh"].doubles(), found.mesh ?: FloatArray(0), LANDMARK_TOL)
    }
}

fun checkPq(g: Golden, c: Checker) {
    val codebooks = g["pq.codebooks"].floats()
    val codes = g["pq.codes"].bytes()
    val ids = g["pq.ids"].longs()
    val xq = g["pq.queries"].floats()
    val k = g["pq.k"].ints()[0]
    val d = g["pq.queries"].shape[1]
    for (tag in listOf("ip", "l2", "opq_ip")) {
        val spec = parseSpec(g.text("pq.$tag.spec"))
        c.check("pq", "pq.$tag.spec round trip", spec.toString() == g.text("pq.$tag.spec"), "parseSpec('${g.text("pq.$tag.spec")}') -> '$spec'")
        val rotation = if (spec.opq) g["pq.$tag.rotation"].floats() else null
        val gal = Gallery(spec, d, codebooks, codes, ids, rotation)
        val xr = if (rotation != null) rotate(xq, rotation, d) else xq
        c.floats("pq", "pq.$tag.lut", g["pq.$tag.lut"].doubles(), lookupTables(gal, xr), PQ_TOL)
        val res = pqSearch(gal, xq, k)
        c.floats("pq", "pq.$tag.D", g["pq.$tag.D"].doubles(), res.D, PQ_TOL)
        c.ints("pq", "pq.$tag.I", g["pq.$tag.I"].longs(), res.I)
    }
    for (tag in listOf("ip", "l2")) {
        val spec = parseSpec("PQ4x4,${tag.toUpperCase()}")
        val small = Gallery(spec, d, codebooks, codes.copyOfRange(0, 3 * spec.M), ids.copyOfRange(0, 3))
        val res = pqSearch(small, xq, g["pq.small_$tag.I"].shape[1])
        c.floats("pq", "pq.small_$tag.D", g["pq.small_$tag.D"].doubles(), res.D, PQ_TOL)
        c.ints("pq", "pq.small_$tag.I", g["pq.small_$tag.I"].longs(), res.I)
    }
    val M = g["pq.codebooks"].shape[0]
    val ksub = g["pq.codebooks"].shape[1]
    c.ints("pq", "pq.encode.codes", g["pq.encode.codes"].longs(), encode(codebooks, M, ksub, g["pq.encode.x"].floats()))
    c.ints("pq", "pq.encode.codes_opq", g["pq.encode.codes_opq"].longs(),
        encode(codebooks, M, ksub, g["pq.encode.x"].floats(), g["pq.opq_ip.rotation"].floats()))
    val fromFile = galleryFromBytes(g["pq.gfpq_bytes"].bytes())
    c.check("pq", "pq.gfpq header", fromFile.spec.toString() == "PQ4x4,IP" && fromFile.d == d, "read ${fromFile.spec} d=${fromFile.d}")
    c.floats("pq", "pq.gfpq codebooks", g["pq.codebooks"].doubles(), fromFile.codebooks, 0.0)
    c.ints("pq", "pq.gfpq codes", g["pq.codes"].longs(), fromFile.codes)
    c.ints("pq", "pq.gfpq ids", ids, fromFile.ids)
    // A corrupted byte must be caught by the CRC32.
    val bad = g["pq.gfpq_bytes"].bytes()
    bad[GFPQ_HEADER_SIZE + 5] = (bad[GFPQ_HEADER_SIZE + 5] + 1).toByte()
    val caught = try { galleryFromBytes(bad); false } catch (e: GalleryException) { e.message!!.contains("checksum") }
    c.check("pq", "pq.gfpq corrupted", caught, "a modified codebook byte was not refused")
    checkPqRefine(g, c)
}

/** SQ8 int8 codes as signed integers (Checker.ints reads a ByteArray as unsigned PQ codes). */
fun signed(b: ByteArray): LongArray = LongArray(b.size) { b[it].toLong() }

fun checkPqRefine(g: Golden, c: Checker) {
    val codebooks = g["pq.codebooks"].floats()
    val ids = g["pq.ids"].longs()
    val codes = g["pq.refine.codes"].bytes()
    val scales = g["pq.refine.scales"].floats()
    val sq8 = g["pq.refine.sq8"].bytes()
    val xq = g["pq.refine.queries"].floats()
    val k = g["pq.refine.k"].ints()[0]
    val shortlist = g["pq.refine.shortlist"].ints()[0]
    val d = g["pq.refine.queries"].shape[1]
    // Enrollment: the gallery's own SQ8 codes from its vectors and scales, and the rounding/clipping cases.
    c.ints("pq", "pq.refine.sq8", g["pq.refine.sq8"].longs(), signed(sq8Encode(scales, g["pq.refine.x"].floats())))
    c.ints("pq", "pq.sq8.codes", g["pq.sq8.codes"].longs(), signed(sq8Encode(g["pq.sq8.scales"].floats(), g["pq.sq8.x"].floats())))
    for (tag in listOf("ip", "l2", "opq_ip")) {
        val text = g.text("pq.refine_$tag.spec")
        val spec = parseSpec(text)
        c.check("pq", "pq.refine_$tag.spec round trip", spec.toString() == text && spec.refine == "SQ8", "parseSpec('$text') -> '$spec'")
        val rotation = if (spec.opq) g["pq.opq_ip.rotation"].floats() else null
        val gal = Gallery(spec, d, codebooks, codes, ids, rotation, scales, sq8, shortlist)
        val res = pqSearch(gal, xq, k)
        c.floats("pq", "pq.refine_$tag.D", g["pq.refine_$tag.D"].doubles(), res.D, REFINE_TOL)
        c.ints("pq", "pq.refine_$tag.I", g["pq.refine_$tag.I"].longs(), res.I)
    }
    val M = g["pq.codebooks"].shape[0]
    val small = Gallery(parseSpec("PQ4x4,IP,Refine(SQ8)"), d, codebooks, codes.copyOfRange(0, 3 * M), ids.copyOfRange(0, 3),
        null, scales, sq8.copyOfRange(0, 3 * d), shortlist)
    val smallRes = pqSearch(small, xq, g["pq.refine_small.I"].shape[1])
    c.floats("pq", "pq.refine_small.D", g["pq.refine_small.D"].doubles(), smallRes.D, REFINE_TOL)
    c.ints("pq", "pq.refine_small.I", g["pq.refine_small.I"].longs(), smallRes.I)
    // The version-2 file: header, refine section, and the same search as from the arrays.
    val bytes = g["pq.refine.gfpq_bytes"].bytes()
    val fromFile = galleryFromBytes(bytes)
    c.check("pq", "pq.refine.gfpq header", fromFile.spec.toString() == "OPQ4,PQ4x4,IP,Refine(SQ8)" && fromFile.d == d &&
        fromFile.shortlist == shortlist, "read ${fromFile.spec} d=${fromFile.d} shortlist=${fromFile.shortlist}")
    c.floats("pq", "pq.refine.gfpq scales", g["pq.refine.scales"].doubles(), fromFile.refineScales ?: FloatArray(0), 0.0)
    c.ints("pq", "pq.refine.gfpq sq8", g["pq.refine.sq8"].longs(), signed(fromFile.refineCodes ?: ByteArray(0)))
    c.ints("pq", "pq.refine.gfpq ids", ids, fromFile.ids)
    c.ints("pq", "pq.refine.gfpq search", g["pq.refine_opq_ip.I"].longs(), pqSearch(fromFile, xq, k).I)
    // A corrupted refine code and a cut-off file are refused.
    val bad = bytes.copyOf()
    bad[bytes.size - 10] = (bad[bytes.size - 10] + 1).toByte()
    val badCrc = try { galleryFromBytes(bad); false } catch (e: GalleryException) { e.message!!.contains("checksum") }
    c.check("pq", "pq.refine.gfpq corrupted", badCrc, "a modified refine code byte was not refused")
    val cut = try { galleryFromBytes(bytes.copyOf(bytes.size - 5)); false } catch (e: GalleryException) { e.message!!.contains("truncated") }
    c.check("pq", "pq.refine.gfpq truncated", cut, "a file missing its last refine bytes was not refused")
}

fun checkManifest(g: Golden, c: Checker) {
    val m = Manifest.parse(g.text("manifest.json"), "golden sample manifest")
    val det = m.detector!!
    c.ints("manifest", "manifest.detector.num_anchors", g["manifest.detector.num_anchors"].longs(), intArrayOf(det.numAnchors))
    c.ints("manifest", "manifest.detector.strides", g["manifest.detector.strides"].longs(), det.anchors.strides)
    c.floats("manifest", "manifest.detector.scales", g["manifest.detector.scales"].doubles(),
        doubleArrayOf(det.decode.scale, det.anchors.minScale, det.anchors.maxScale, det.decode.minScore, det.decode.nmsIou), 0.0)
    // The manifest's anchor settings must generate the runtime's anchors.
    c.floats("manifest", "manifest anchors", g["anchors.default"].doubles(), generateAnchors(det.anchors), ANCHOR_TOL)
    val al = m.aligner!!
    c.ints("manifest", "manifest.template.size", g["manifest.template.size"].longs(), intArrayOf(al.template.width, al.template.height))
    c.floats("manifest", "manifest.template.points", g["manifest.template.points"].doubles(), al.template.points, 0.0)
    c.ints("manifest", "manifest.mesh.keypoint_indices", g["manifest.mesh.keypoint_indices"].longs(), al.mesh.keypointIndices)
    val gate = m.gate!!
    c.floats("manifest", "manifest.gate.threshold", g["manifest.gate.threshold"].doubles(), doubleArrayOf(gate.threshold), 0.0)
    c.ints("manifest", "manifest.gate.accept_mask", g["manifest.gate.accept_mask"].longs(),
        IntArray(gate.classNames.size) { if (gate.classNames[it] in gate.acceptClasses) 1 else 0 })
    val gal = m.gallery!!
    c.ints("manifest", "manifest.gallery.shape", g["manifest.gallery.shape"].longs(), longArrayOf(gal.d.toLong(), gal.n, gal.codeSize.toLong()))
    c.check("manifest", "manifest.gallery.spec", gal.spec.toString() == g.text("manifest.gallery.spec"), "read ${gal.spec}")
    c.ints("manifest", "manifest.models.input_shapes", g["manifest.models.input_shapes"].longs(),
        m.models.flatMap { it.input.shape.toList() }.toIntArray())
    // The sample's stand-in hashes are sha256(file name): checks sha256Hex against Python's hashlib.
    c.check("manifest", "manifest.golden sha256", m.golden!!.sha256 == sha256Hex(m.golden!!.file.toByteArray()),
        "sha256Hex('${m.golden!!.file}') differs from the manifest's ${m.golden!!.sha256}")
    // openBundle on a folder whose files contain their own names (so the stand-in hashes match):
    // the models verify, then the gallery is parsed and refused (it is not a .gfpq).
    val dir = createTempDir("glassfinder-bundle")
    try {
        File(dir, MANIFEST_NAME).writeText(g.text("manifest.json"))
        for (name in m.models.map { it.file } + listOf(gal.file, gal.skuFile, m.golden!!.file)) File(dir, name).writeText(name)
        val e1 = try { openBundle(DirectoryBundleFiles(dir)); "opened" } catch (e: GlassfinderException) { e.message!! }
        c.check("manifest", "openBundle verifies hashes then parses the gallery", e1.contains("bad magic"), e1)
        File(dir, "detector.tflite").writeText("tampered")
        val e2 = try { openBundle(DirectoryBundleFiles(dir)); "opened" } catch (e: GlassfinderException) { e.message!! }
        c.check("manifest", "openBundle refuses a tampered model", e2.contains("detector.tflite: sha256 mismatch"), e2)
    } finally {
        dir.deleteRecursively()
    }
    // A manifest from a newer writer must be refused with a clear message.
    val newer = g.text("manifest.json").replace("\"min_reader_version\":1", "\"min_reader_version\":99")
    val refused = try { Manifest.parse(newer); false } catch (e: BundleException) { e.message!!.contains("reader version 99") }
    c.check("manifest", "manifest newer reader refused", refused, "min_reader_version 99 was not refused")
}

/** The JSON reader refuses what runtime/bundle.py refuses (duplicate keys, NaN, trailing text) and
 * decodes escapes; these are fixed cases, not golden blocks. */
fun checkJson(c: Checker) {
    fun refused(text: String): Boolean = try { parseJson(text); false } catch (e: JsonException) { true }
    c.check("json", "duplicate key refused", refused("{\"a\":1,\"a\":2}"), "a duplicate key was accepted")
    c.check("json", "NaN refused", refused("{\"a\":NaN}"), "NaN was accepted")
    c.check("json", "trailing text refused", refused("{} x"), "trailing text was accepted")
    c.check("json", "unterminated refused", refused("{\"a\":[1,2"), "an unterminated list was accepted")
    val v = parseJson("{\"s\":\"\\u00e9\\n\\\"\",\"i\":-12,\"d\":2.5e-3,\"b\":[true,false,null]}") as Map<*, *>
    c.check("json", "values decoded", v["s"] == "\u00e9\n\"" && v["i"] == -12L && v["d"] == 2.5e-3 && v["b"] == listOf(true, false, null),
        "decoded $v")
}

fun main(args: Array<String>) {
    val path = if (args.isNotEmpty()) args[0] else "tests/fixtures/golden/golden.txt"
    val file = File(path)
    if (!file.isFile) {
        System.err.println("golden vectors not found: $path (write them with glassfinder_runtime.golden.write_golden)")
        exitProcess(2)
    }
    val g = Golden.parse(file.readText())
    val c = Checker()
    val version = g["format_version"].longs()[0]
    if (version != GOLDEN_FORMAT_VERSION) {
        System.err.println("$path is golden format $version; this check reads format $GOLDEN_FORMAT_VERSION")
        exitProcess(2)
    }
    g["seed"]
    val stages = listOf<Pair<String, (Golden, Checker) -> Unit>>(
        "image_limits" to ::checkImageLimits, "detect" to ::checkDetect, "geometry" to ::checkGeometry, "landmarks" to ::checkLandmarks,
        "pipeline" to ::checkPipeline, "pq" to ::checkPq, "manifest" to ::checkManifest, "find_face" to ::checkFindFace)
    for ((name, fn) in stages) {
        try {
            fn(g, c)
        } catch (e: Exception) {  // a crash in one stage is a failure, the other stages still run
            c.check(name, "$name (exception)", false, "${e.javaClass.simpleName}: ${e.message}")
        }
    }
    checkJson(c)
    // A stage the runtime writes but this check never compares is a failure: add it here.
    val unchecked = g.blocks.keys.filter { it !in g.used }
    c.check("golden", "every golden block compared", unchecked.isEmpty(), "blocks never compared: $unchecked")
    c.report()
    exitProcess(if (c.failed == 0) 0 else 1)
}

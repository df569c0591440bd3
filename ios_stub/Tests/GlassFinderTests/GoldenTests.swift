// The Swift core against the golden vectors written by the Python runtime (runtime/golden.py),
// block for block as android_stub/src/test/kotlin/glassfinder/GoldenCheck.kt: integers exactly,
// floats within the same named tolerances. Reads tests/fixtures/golden/golden.txt of this
// repository (or the file named by $GLASSFINDER_GOLDEN). Run on a Mac: `cd ios_stub && swift test`.
import Foundation
import XCTest
@testable import GlassFinder

// ---- Named tolerances (absolute), the same as GoldenCheck.kt ----
let LETTERBOX_TOL = 1e-12
let NORMALIZE_TOL = 1e-6
let ANCHOR_TOL = 1e-7
let DECODE_TOL = 1e-6
let NMS_TOL = 1e-6
let PROJECT_TOL = 1e-4
let SIMILARITY_TOL = 1e-9
let AFFINE_TOL = 1e-9
let LANDMARK_TOL = 1e-4
let INT8_TOL = 1e-7
let GATE_TOL = 1e-6
let L2_TOL = 1e-6
/// Lookup tables and distances: vDSP's dot products sum in another order than numpy's einsum.
let PQ_TOL = 1e-5
/// Refine(SQ8) re-ranked scores: Float sums of d = 16 products scale * code * q (numpy sums in
/// another order); absolute, the scores are below 10.
let REFINE_TOL = 1e-5
/// Mean pixel of each aligner crop in findFace: the crops are byte-identical, so the means are equal.
let CROP_MEAN_TOL = 0.0

final class GoldenTests: XCTestCase {
    static var golden: Golden!
    static var text = ""

    override class func setUp() {
        super.setUp()
        let path = ProcessInfo.processInfo.environment["GLASSFINDER_GOLDEN"]
            ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("tests/fixtures/golden/golden.txt").path
        // A missing fixture is a failure, not a skip.
        text = try! String(contentsOfFile: path, encoding: .utf8)
        golden = try! Golden.parse(text)
    }

    var g: Golden { GoldenTests.golden }

    func assertClose(_ expected: [Double], _ actual: [Double], _ tol: Double, _ name: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(expected.count, actual.count, "\(name): size", file: file, line: line)
        var worst = 0.0, at = -1
        for i in 0..<min(expected.count, actual.count) {
            let e = expected[i], a = actual[i]
            let err = e == a ? 0 : (e.isFinite && a.isFinite ? abs(e - a) : .infinity)
            if err > worst { worst = err; at = i }
        }
        XCTAssertLessThanOrEqual(worst, tol, "\(name): max error \(worst) at [\(at)]", file: file, line: line)
    }

    func assertClose(_ expected: [Double], _ actual: [Float], _ tol: Double, _ name: String, file: StaticString = #filePath, line: UInt = #line) {
        assertClose(expected, actual.map { Double($0) }, tol, name, file: file, line: line)
    }

    func assertExact(_ expected: [Int64], _ actual: [Int64], _ name: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(expected, actual, name, file: file, line: line)
    }

    func template(_ name: String) throws -> CropTemplate { try CropTemplate.fromJSON(try JSONObject.parse(try g.text(name), name)) }
    func image(_ b: GoldenBlock) throws -> RgbImage { try RgbImage(width: b.shape[1], height: b.shape[0], pixels: b.bytes()) }
    func slice<T>(_ a: [T], _ i: Int, _ n: Int) -> [T] { Array(a[(i * n)..<(i * n + n)]) }

    func testImageLimits() throws {
        let limits = ImageLimits()
        assertClose(try g["image_limits.values"].doubles(), [Double(limits.maxPixels), Double(limits.minSide), limits.maxAspect], 0, "image_limits.values")
        let sizes = try g["image_limits.sizes"].ints()
        let accepted: [Int64] = (0..<(sizes.count / 2)).map { i in (try? limits.check(width: sizes[2 * i], height: sizes[2 * i + 1])) != nil ? 1 : 0 }
        assertExact(try g["image_limits.accepted"].int64s(), accepted, "image_limits.accepted")
    }

    func testLetterboxAndNormalize() throws {
        let size = try g["letterbox.input_size"].ints()[0], sizes = try g["letterbox.image_sizes"].ints()
        let mats = try g["letterbox.matrices"].doubles()
        for i in 0..<(sizes.count / 2) {
            assertClose(slice(mats, i, 6), try letterbox(width: sizes[2 * i], height: sizes[2 * i + 1], size: size).matrix, LETTERBOX_TOL, "letterbox[\(i)]")
        }
        let cases = try g["tiles.cases"].ints(), counts = try g["tiles.counts"].ints(), windows = try g["tiles.windows"].int64s()
        var offset = 0
        for (i, count) in counts.enumerated() {
            let t = tileWindows(width: cases[3 * i], height: cases[3 * i + 1], rows: cases[3 * i + 2])
            assertExact(Array(windows[(3 * offset)..<(3 * (offset + count))]), t.map { Int64($0) }, "tiles[\(i)]")
            offset += count
        }
        let px = try g["normalize.pixels"].bytes()
        for tag in ["half", "imagenet"] {
            assertClose(try g["normalize.\(tag).out"].doubles(),
                        normalize(px, mean: try g["normalize.\(tag).mean"].doubles(), std: try g["normalize.\(tag).std"].doubles()), NORMALIZE_TOL, "normalize.\(tag)")
        }
    }

    func testAnchors() throws {
        for tag in ["default", "alt"] {
            let opts = try AnchorOptions.fromJSON(try JSONObject.parse(try g.text("anchors.\(tag).options"), tag))
            assertClose(try g["anchors.\(tag)"].doubles(), generateAnchors(opts), ANCHOR_TOL, "anchors.\(tag)")
        }
    }

    func testDecode() throws {
        for tag in ["xywh", "yxhw"] {
            let p = "decode.\(tag)"
            let opts = try DecodeOptions.fromJSON(try JSONObject.parse(try g.text("\(p).options"), p))
            let det = try decodeBoxes(try g["\(p).raw_boxes"].floats(), try g["\(p).raw_scores"].floats(), try g["\(p).anchors"].floats(), opts)
            assertClose(try g["\(p).boxes"].doubles(), det.boxes, DECODE_TOL, "\(p).boxes")
            assertClose(try g["\(p).keypoints"].doubles(), det.keypoints, DECODE_TOL, "\(p).keypoints")
            assertClose(try g["\(p).scores"].doubles(), det.scores, DECODE_TOL, "\(p).scores")
        }
    }

    func testNmsAndProject() throws {
        let det = Detections(boxes: try g["nms.boxes"].floats(), keypoints: try g["nms.keypoints"].floats(),
                             scores: try g["nms.scores"].floats(), numKeypoints: try g["nms.keypoints"].shape[1])
        assertClose(try g["nms.iou_first"].doubles(), iou(det.boxes, 0, det.boxes), NMS_TOL, "nms.iou_first")
        let minScore = try g["nms.min_score"].doubles()[0], thr = try g["nms.iou_threshold"].doubles()[0]
        var weighted: Detections!
        for (tag, algo) in [("weighted", NmsAlgorithm.weighted), ("hard", NmsAlgorithm.hard)] {
            let out = weightedNms(det, minScore: minScore, iouThreshold: thr, algorithm: algo)
            if algo == .weighted { weighted = out }
            assertExact(try g["nms.\(tag).count"].int64s(), [Int64(out.count)], "nms.\(tag).count")
            assertClose(try g["nms.\(tag).boxes"].doubles(), out.boxes, NMS_TOL, "nms.\(tag).boxes")
            assertClose(try g["nms.\(tag).keypoints"].doubles(), out.keypoints, NMS_TOL, "nms.\(tag).keypoints")
            assertClose(try g["nms.\(tag).scores"].doubles(), out.scores, NMS_TOL, "nms.\(tag).scores")
            if algo == .hard {
                let keep = (0..<out.count).map { r in Int64((0..<det.count).first { i in (0..<4).allSatisfy { det.boxes[4 * i + $0] == out.boxes[4 * r + $0] } }!) }
                assertExact(try g["nms.hard.keep"].int64s(), keep, "nms.hard.keep")
            }
        }
        assertExact(try g["nms.weighted.most_prominent"].int64s(), [Int64(mostProminent(weighted))], "most_prominent")
        assertExact(try g["nms.by_prominence"].int64s(), byProminence(det).map { Int64($0) }, "by_prominence")
        let half = try g["nms.merge.split"].ints()[0], k = det.numKeypoints
        func part(_ a: Int, _ b: Int) -> Detections {
            Detections(boxes: Array(det.boxes[(4 * a)..<(4 * b)]), keypoints: Array(det.keypoints[(2 * k * a)..<(2 * k * b)]),
                       scores: Array(det.scores[a..<b]), numKeypoints: k)
        }
        let merged = try merge([part(0, half), part(half, det.count)], iouThreshold: thr)
        assertClose(try g["nms.merge.boxes"].doubles(), merged.boxes, NMS_TOL, "nms.merge.boxes")
        assertClose(try g["nms.merge.keypoints"].doubles(), merged.keypoints, NMS_TOL, "nms.merge.keypoints")
        assertClose(try g["nms.merge.scores"].doubles(), merged.scores, NMS_TOL, "nms.merge.scores")
        let proj = project(weighted, letterboxMatrix: try g["project.letterbox_matrix"].doubles(), inputSize: try g["project.input_size"].ints()[0])
        assertClose(try g["project.boxes"].doubles(), proj.boxes, PROJECT_TOL, "project.boxes")
        assertClose(try g["project.keypoints"].doubles(), proj.keypoints, PROJECT_TOL, "project.keypoints")
    }

    func testSimilarityAndAffine() throws {
        let t = try template("similarity.template")
        let kps = try g["similarity.keypoints"].doubles(), mats = try g["similarity.crop_matrices"].doubles()
        for i in 0..<(kps.count / 10) {
            assertClose(slice(mats, i, 6), try cropMatrix(slice(kps, i, 10), t), SIMILARITY_TOL, "similarity.crop_matrices[\(i)]")
        }
        for n in [2, 7] {
            assertClose(try g["similarity.n\(n).matrix"].doubles(),
                        try estimateSimilarity(try g["similarity.n\(n).src"].doubles(), try g["similarity.n\(n).dst"].doubles()), SIMILARITY_TOL, "similarity.n\(n)")
        }
        let A = try g["affine.matrix"].doubles()
        assertClose(try g["affine.applied"].doubles(), applyAffine(A, try g["affine.points"].doubles()), AFFINE_TOL, "affine.applied")
        assertClose(try g["affine.inverse"].doubles(), invertAffine(A), AFFINE_TOL, "affine.inverse")
    }

    func testWarpsAreByteIdentical() throws {
        let img = try image(try g["warp.image"])
        let size = try g["warp.size"].ints(), mats = try g["warp.matrices"].doubles(), outs = try g["warp.outputs"].int64s()
        let n = size[0] * size[1] * 3
        for i in 0..<(mats.count / 6) {
            assertExact(slice(outs, i, n), warpAffine(img, slice(mats, i, 6), size[0], size[1]).pixels.map { Int64($0) }, "warp.outputs[\(i)]")
        }
        let big = try image(try g["warp.prefiltered.image"])
        assertExact(try g["warp.reduce3"].int64s(), reduce(big, 3).pixels.map { Int64($0) }, "warp.reduce3")
        let ps = try g["warp.prefiltered.size"].ints()[0], pm = try g["warp.prefiltered.matrices"].doubles()
        let pouts = try g["warp.prefiltered.outputs"].int64s()
        for i in 0..<(pm.count / 6) {
            assertExact(slice(pouts, i, ps * ps * 3), cropFace(big, slice(pm, i, 6), size: ps).pixels.map { Int64($0) }, "warp.prefiltered[\(i)]")
        }
        let aligned = try alignCrop(try image(try g["align_crop.image"]), keypoints: try g["align_crop.keypoints"].doubles(), template: try template("align_crop.template"))
        assertClose(try g["align_crop.matrix"].doubles(), aligned.matrix, SIMILARITY_TOL, "align_crop.matrix")
        assertExact(try g["align_crop.crop"].int64s(), aligned.crop.pixels.map { Int64($0) }, "align_crop.crop")
    }

    func testLandmarks() throws {
        let opts = try MeshOptions.fromJSON(try JSONObject.parse(try g.text("landmarks.options"), "landmarks.options"))
        let eyes = try g["landmarks.eyes"].doubles()
        let roi = faceRoi(box: try g["landmarks.box"].doubles(), rightEye: Array(eyes[0..<2]), leftEye: Array(eyes[2..<4]), scale: opts.roiScale)
        assertClose(try g["landmarks.roi"].doubles(), [roi.cx, roi.cy, roi.side, roi.angle], LANDMARK_TOL, "landmarks.roi")
        let A = roiMatrix(roi, size: opts.inputSize)
        assertClose(try g["landmarks.roi_matrix"].doubles(), A, AFFINE_TOL, "landmarks.roi_matrix")
        let mesh = try decodeLandmarks(try g["landmarks.raw"].floats(), A, numLandmarks: opts.numLandmarks)
        assertClose(try g["landmarks.mesh"].doubles(), mesh, LANDMARK_TOL, "landmarks.mesh")
        assertClose(try g["landmarks.glasses_keypoints"].doubles(), glassesKeypoints(mesh, opts), LANDMARK_TOL, "landmarks.glasses_keypoints")
        assertClose(try g["landmarks.presence"].doubles(), try g["landmarks.face_flags"].floats().map { presenceScore($0) }, 1e-12, "landmarks.presence")
        let r2 = roiFromMesh(mesh, scale: opts.roiScale)
        assertClose(try g["landmarks.roi_from_mesh"].doubles(), [r2.cx, r2.cy, r2.side, r2.angle], LANDMARK_TOL, "landmarks.roi_from_mesh")
    }

    func testPipelineBoundaries() throws {
        let px = try g["preprocess.pixels"]
        for tag in ["nhwc_runtime", "nchw_in_graph"] {
            let spec = try Manifest.parseInput(try JSONObject.parse(try g.text("preprocess.\(tag).spec"), tag))
            assertClose(try g["preprocess.\(tag).out"].doubles(), preprocess(px.bytes(), height: px.shape[0], width: px.shape[1], spec: spec), NORMALIZE_TOL, "preprocess.\(tag)")
        }
        for tag in ["ties", "random", "uint8"] {
            let qp = try g["int8.\(tag).quant"].doubles()
            let q = try quantize(try g["int8.\(tag).x"].floats(), scale: qp[0], zeroPoint: Int(qp[1]), dtype: try g.text("int8.\(tag).dtype"))
            assertExact(try g["int8.\(tag).q"].int64s(), q.map { Int64($0) }, "int8.\(tag).q")
            assertClose(try g["int8.\(tag).dequantized"].doubles(), dequantize(q, scale: qp[2], zeroPoint: Int(qp[3])), INT8_TOL, "int8.\(tag).dequantized")
        }
        let settings = try Manifest.parse(try g.text("manifest.json")).gate!
        let accept = try g["gate.accept"].ints(), threshold = try g["gate.threshold"].doubles()[0]
        XCTAssertEqual(try acceptIndices(settings), accept, "gate.accept (manifest)")
        XCTAssertEqual(settings.threshold, threshold, "gate.threshold (manifest)")
        let logitsBlock = try g["gate.logits"], logits = logitsBlock.floats(), n = logitsBlock.shape[1]
        var probs: [Float] = [], pGlasses: [Double] = [], accepted: [Int64] = []
        for r in 0..<(logits.count / n) {
            let row = Array(logits[(r * n)..<(r * n + n)])
            probs += softmax(row)
            let d = gateDecision(row, accept: accept, threshold: threshold)
            pGlasses.append(d.pGlasses)
            accepted.append(d.accepted ? 1 : 0)
            let viaSettings = try gate(row, settings)
            XCTAssertTrue(viaSettings.accepted == d.accepted && viaSettings.pGlasses == d.pGlasses, "gate(settings)[\(r)] agrees with gateDecision")
        }
        assertClose(try g["gate.probs"].doubles(), probs, GATE_TOL, "gate.probs")
        assertClose(try g["gate.p_glasses"].doubles(), pGlasses, GATE_TOL, "gate.p_glasses")
        assertExact(try g["gate.accepted"].int64s(), accepted, "gate.accepted")
        let x = try g["l2_normalize.x"]
        assertClose(try g["l2_normalize.out"].doubles(), l2Normalize(x.floats(), d: x.shape[1]), L2_TOL, "l2_normalize")
    }

    func testPQ() throws {
        let codebooks = try g["pq.codebooks"].floats(), codes = try g["pq.codes"].bytes(), ids = try g["pq.ids"].int64s()
        let xq = try g["pq.queries"].floats(), k = try g["pq.k"].ints()[0], d = try g["pq.queries"].shape[1]
        for tag in ["ip", "l2", "opq_ip"] {
            let text = try g.text("pq.\(tag).spec")
            let spec = try parseSpec(text)
            XCTAssertEqual(spec.description, text, "spec round trip")
            let rotation: [Float]? = try spec.opq ? g["pq.\(tag).rotation"].floats() : nil
            let gal = try Gallery(spec: spec, d: d, codebooks: codebooks, codes: codes, ids: ids, rotation: rotation)
            assertClose(try g["pq.\(tag).lut"].doubles(), lookupTables(gal, rotation.map { rotate(xq, $0, d: d) } ?? xq), PQ_TOL, "pq.\(tag).lut")
            let res = try pqSearch(gal, xq, k: k)
            assertClose(try g["pq.\(tag).D"].doubles(), res.D, PQ_TOL, "pq.\(tag).D")
            assertExact(try g["pq.\(tag).I"].int64s(), res.I, "pq.\(tag).I")
        }
        for tag in ["ip", "l2"] {
            let spec = try parseSpec("PQ4x4,\(tag.uppercased())")
            let small = try Gallery(spec: spec, d: d, codebooks: codebooks, codes: Array(codes[0..<(3 * spec.M)]), ids: Array(ids[0..<3]))
            let res = try pqSearch(small, xq, k: try g["pq.small_\(tag).I"].shape[1])
            assertClose(try g["pq.small_\(tag).D"].doubles(), res.D, PQ_TOL, "pq.small_\(tag).D")
            assertExact(try g["pq.small_\(tag).I"].int64s(), res.I, "pq.small_\(tag).I")
        }
        let M = try g["pq.codebooks"].shape[0], ksub = try g["pq.codebooks"].shape[1], x = try g["pq.encode.x"].floats()
        assertExact(try g["pq.encode.codes"].int64s(), encode(codebooks: codebooks, M: M, ksub: ksub, x: x).map { Int64($0) }, "pq.encode.codes")
        assertExact(try g["pq.encode.codes_opq"].int64s(),
                    encode(codebooks: codebooks, M: M, ksub: ksub, x: x, rotation: try g["pq.opq_ip.rotation"].floats()).map { Int64($0) }, "pq.encode.codes_opq")
        var bytes = try g["pq.gfpq_bytes"].bytes()
        let file = try galleryFromBytes(bytes)
        XCTAssertEqual(file.spec.description, "PQ4x4,IP")
        XCTAssertEqual(file.codebooks, codebooks)
        XCTAssertEqual(file.codes, codes)
        XCTAssertEqual(file.ids, ids)
        bytes[gfpqHeaderSize + 5] &+= 1  // a corrupted codebook byte must be caught by the CRC32
        XCTAssertThrowsError(try galleryFromBytes(bytes)) { XCTAssertTrue("\($0)".contains("checksum")) }
        try checkPQRefine()
    }

    /// Refine(SQ8): part of testPQ (not a test of its own, so XCTest runs it once per pass).
    func checkPQRefine() throws {
        let codebooks = try g["pq.codebooks"].floats(), ids = try g["pq.ids"].int64s()
        let codes = try g["pq.refine.codes"].bytes(), scales = try g["pq.refine.scales"].floats()
        let sq8 = try g["pq.refine.sq8"].int64s().map { Int8($0) }  // signed: bytes() reads UInt8
        let xq = try g["pq.refine.queries"].floats(), k = try g["pq.refine.k"].ints()[0]
        let shortlist = try g["pq.refine.shortlist"].ints()[0], d = try g["pq.refine.queries"].shape[1]
        assertExact(try g["pq.refine.sq8"].int64s(), sq8Encode(scales: scales, x: try g["pq.refine.x"].floats()).map { Int64($0) }, "pq.refine.sq8")
        assertExact(try g["pq.sq8.codes"].int64s(),
                    sq8Encode(scales: try g["pq.sq8.scales"].floats(), x: try g["pq.sq8.x"].floats()).map { Int64($0) }, "pq.sq8.codes")
        for tag in ["ip", "l2", "opq_ip"] {
            let text = try g.text("pq.refine_\(tag).spec")
            let spec = try parseSpec(text)
            XCTAssertEqual(spec.description, text, "refine spec round trip")
            XCTAssertEqual(spec.refine, "SQ8")
            let rotation: [Float]? = try spec.opq ? g["pq.opq_ip.rotation"].floats() : nil
            let gal = try Gallery(spec: spec, d: d, codebooks: codebooks, codes: codes, ids: ids, rotation: rotation,
                                  refineScales: scales, refineCodes: sq8, shortlist: shortlist)
            let res = try pqSearch(gal, xq, k: k)
            assertClose(try g["pq.refine_\(tag).D"].doubles(), res.D, REFINE_TOL, "pq.refine_\(tag).D")
            assertExact(try g["pq.refine_\(tag).I"].int64s(), res.I, "pq.refine_\(tag).I")
        }
        let M = try g["pq.codebooks"].shape[0]
        let small = try Gallery(spec: try parseSpec("PQ4x4,IP,Refine(SQ8)"), d: d, codebooks: codebooks, codes: Array(codes[0..<(3 * M)]),
                                ids: Array(ids[0..<3]), refineScales: scales, refineCodes: Array(sq8[0..<(3 * d)]), shortlist: shortlist)
        let smallRes = try pqSearch(small, xq, k: try g["pq.refine_small.I"].shape[1])
        assertClose(try g["pq.refine_small.D"].doubles(), smallRes.D, REFINE_TOL, "pq.refine_small.D")
        assertExact(try g["pq.refine_small.I"].int64s(), smallRes.I, "pq.refine_small.I")
        // The version-2 file: header, refine section, and the same search as from the arrays.
        var bytes = try g["pq.refine.gfpq_bytes"].bytes()
        let file = try galleryFromBytes(bytes)
        XCTAssertEqual(file.spec.description, "OPQ4,PQ4x4,IP,Refine(SQ8)")
        XCTAssertEqual(file.shortlist, shortlist)
        XCTAssertEqual(file.refineScales ?? [], scales)
        XCTAssertEqual(file.refineCodes ?? [], sq8)
        XCTAssertEqual(file.ids, ids)
        assertExact(try g["pq.refine_opq_ip.I"].int64s(), try pqSearch(file, xq, k: k).I, "pq.refine.gfpq search")
        XCTAssertThrowsError(try galleryFromBytes(Array(bytes[0..<(bytes.count - 5)]))) { XCTAssertTrue("\($0)".contains("truncated")) }
        bytes[bytes.count - 10] &+= 1  // a corrupted refine code must be caught by the CRC32
        XCTAssertThrowsError(try galleryFromBytes(bytes)) { XCTAssertTrue("\($0)".contains("checksum")) }
    }

    func testManifest() throws {
        let text = try g.text("manifest.json")
        let m = try Manifest.parse(text, source: "golden sample manifest")
        let det = m.detector!
        assertExact(try g["manifest.detector.num_anchors"].int64s(), [Int64(det.numAnchors)], "num_anchors")
        assertExact(try g["manifest.detector.strides"].int64s(), det.anchors.strides.map { Int64($0) }, "strides")
        assertClose(try g["manifest.detector.scales"].doubles(),
                    [det.decode.scale, det.anchors.minScale, det.anchors.maxScale, det.decode.minScore, det.decode.nmsIou], 0, "scales")
        assertClose(try g["anchors.default"].doubles(), generateAnchors(det.anchors), ANCHOR_TOL, "manifest anchors")
        let al = m.aligner!
        assertExact(try g["manifest.template.size"].int64s(), [Int64(al.template.width), Int64(al.template.height)], "template.size")
        assertClose(try g["manifest.template.points"].doubles(), al.template.points, 0, "template.points")
        assertExact(try g["manifest.mesh.keypoint_indices"].int64s(), al.mesh.keypointIndices.map { Int64($0) }, "mesh.keypoint_indices")
        let gate = m.gate!
        assertClose(try g["manifest.gate.threshold"].doubles(), [gate.threshold], 0, "gate.threshold")
        assertExact(try g["manifest.gate.accept_mask"].int64s(), gate.classNames.map { Int64(gate.acceptClasses.contains($0) ? 1 : 0) }, "accept_mask")
        let gal = m.gallery!
        assertExact(try g["manifest.gallery.shape"].int64s(), [Int64(gal.d), gal.n, Int64(gal.codeSize)], "gallery.shape")
        XCTAssertEqual(gal.spec.description, try g.text("manifest.gallery.spec"))
        assertExact(try g["manifest.models.input_shapes"].int64s(), m.models.flatMap { $0.input.shape.map { Int64($0) } }, "input_shapes")
        // The sample's stand-in hashes are sha256(file name): sha256Hex agrees with Python's hashlib.
        XCTAssertEqual(m.golden!.sha256, sha256Hex(Array(m.golden!.file.utf8)))
        let newer = text.replacingOccurrences(of: "\"min_reader_version\":1", with: "\"min_reader_version\":99")
        XCTAssertThrowsError(try Manifest.parse(newer)) { XCTAssertTrue("\($0)".contains("reader version 99")) }
    }

    /// pipeline.find_face over the fake models golden.py describes (checkFindFace in GoldenCheck.kt).
    func testFindFace() throws {
        let image = try self.image(try g["find_face.image"])
        let spec = DetectorSettings(anchors: try AnchorOptions.fromJSON(try JSONObject.parse(try g.text("find_face.anchor_options"), "anchor_options")),
                                    decode: try DecodeOptions.fromJSON(try JSONObject.parse(try g.text("find_face.decode_options"), "decode_options")))
        let meshOpts = try MeshOptions.fromJSON(try JSONObject.parse(try g.text("find_face.mesh_options"), "mesh_options"))
        let anchors = generateAnchors(spec.anchors), numAnchors = anchors.count / 4, numCoords = spec.decode.numCoords
        let background = try g["find_face.fake_detector.background_logit"].floats()[0]
        let flag = try g["find_face.fake_aligner.flag"].doubles(), rawMesh = try g["find_face.fake_aligner.raw"].floats()
        for tag in ["whole", "tiled", "none", "recrop"] {
            let p = "find_face.\(tag)"
            let o = try g["\(p).options"].ints()
            let shift = try g["\(p).fake_aligner.shift"].floats()  // crop pixels, added to x and y
            let caseMesh = rawMesh.enumerated().map { $0.offset % 3 < 2 ? $0.element + shift[$0.offset % 3] : $0.element }
            let calls = try g["\(p).fake_detector.call"].ints(), anchorIdx = try g["\(p).fake_detector.anchor"].ints()
            let raw = try g["\(p).fake_detector.raw"].floats(), rowLogits = try g["\(p).fake_detector.logit"].floats()
            var detectorCalls = 0, regions: [Region] = [], means: [Double] = []
            let runDetector: DetectorFn = { region, _ in
                var boxes = [Float](repeating: 0, count: numAnchors * numCoords)
                var scores = [Float](repeating: background, count: numAnchors)
                for r in calls.indices where calls[r] == detectorCalls {
                    boxes.replaceSubrange((anchorIdx[r] * numCoords)..<((anchorIdx[r] + 1) * numCoords), with: raw[(r * numCoords)..<((r + 1) * numCoords)])
                    scores[anchorIdx[r]] = rowLogits[r]
                }
                detectorCalls += 1
                regions.append(region)
                return [boxes, scores]
            }
            let runAligner: ModelFn = { crop in
                let mean = Double(crop.pixels.reduce(0) { $0 + Int($1) }) / Double(crop.pixels.count)
                means.append(mean)
                return [caseMesh, [Float((mean - flag[0]) / flag[1])]]
            }
            let found = try findFace(image, runDetector, runAligner, spec, anchors: anchors, meshOpts: meshOpts,
                                     opts: FaceSearchOptions(refine: o[0], tileRows: o[1], maxCandidates: o[2]))
            assertExact(try g["\(p).detector_calls"].int64s(), [Int64(detectorCalls)], "\(p).detector_calls")
            let tiles = o[1] > 0 ? tileWindows(width: image.width, height: image.height, rows: o[1]) : []
            let expected = [Region(x0: 0, y0: 0, width: image.width, height: image.height)]
                + (0..<(tiles.count / 3)).map { Region(x0: tiles[3 * $0], y0: tiles[3 * $0 + 1], width: tiles[3 * $0 + 2], height: tiles[3 * $0 + 2]) }
            XCTAssertEqual(regions, Array(expected.prefix(regions.count)), "\(p) detector regions")
            assertClose(try g["\(p).aligner_means"].doubles(), means, CROP_MEAN_TOL, "\(p).aligner_means")
            assertClose(try g["\(p).boxes"].doubles(), found.detections.boxes, PROJECT_TOL, "\(p).boxes")
            assertClose(try g["\(p).keypoints"].doubles(), found.detections.keypoints, PROJECT_TOL, "\(p).keypoints")
            assertClose(try g["\(p).scores"].doubles(), found.detections.scores, DECODE_TOL, "\(p).scores")
            assertExact(try g["\(p).index"].int64s(), [Int64(found.index)], "\(p).index")
            assertClose(try g["\(p).presence"].doubles(), [found.presence], GATE_TOL, "\(p).presence")
            assertClose(try g["\(p).mesh"].doubles(), found.mesh ?? [], LANDMARK_TOL, "\(p).mesh")
        }
    }


    /// Runs every check above once more on a fresh reader and fails on a block none of them read
    /// (GoldenCheck.kt's "every golden block compared"): a stage added to golden.py cannot be skipped.
    func testEveryBlockIsCompared() throws {
        let saved = GoldenTests.golden!
        GoldenTests.golden = try Golden.parse(GoldenTests.text)
        defer { GoldenTests.golden = saved }
        try testImageLimits(); try testLetterboxAndNormalize(); try testAnchors(); try testDecode(); try testNmsAndProject()
        try testSimilarityAndAffine(); try testWarpsAreByteIdentical(); try testLandmarks(); try testPipelineBoundaries()
        try testPQ(); try testManifest(); try testFindFace()
        _ = (try g["format_version"], try g["seed"])
        let unchecked = Set(g.blocks.keys).subtracting(g.used.names).sorted()
        XCTAssertEqual(unchecked, [], "blocks never compared: \(unchecked)")
    }

}

// The float boundaries of the models, the gate decision and the face search (Pipeline.kt in the
// Android stub). Translation of runtime/pipeline.py: preprocess, quantize / dequantize, softmax,
// gate_decision, l2_normalize, the stages over model callables (detect_faces, face_mesh,
// locate_landmarks, find_face), and the API's plain types.
import Foundation

/// pipeline.preprocess: (h, w, 3) pixels -> the model's float input ("runtime": (p/255 - mean)/std,
/// "in_graph": p/255), NHWC or NCHW.
public func preprocess(_ pixels: [UInt8], height: Int, width: Int, spec: InputSpec) -> [Float] {
    let x = spec.normalization == "runtime" ? normalize(pixels, mean: spec.mean, std: spec.std) : pixels.map { Float($0) / 255 }
    if spec.layout != "NCHW" { return x }
    var out = [Float](repeating: 0, count: x.count)
    for i in 0..<(height * width) { for c in 0..<3 { out[c * height * width + i] = x[3 * i + c] } }
    return out
}

/// pipeline.quantize: float -> int8/uint8 (dtype "int8" or "uint8") with the tensor's own scale and
/// zero point: clip(round(x / scale) + zeroPoint) in Float, rounding half to EVEN (numpy's np.round;
/// TFLite's own quantizer would round half away from zero). Returns the integer values.
public func quantize(_ x: [Float], scale: Double, zeroPoint: Int, dtype: String) throws -> [Int] {
    let bounds: (lo: Float, hi: Float)
    switch dtype {
    case "int8": bounds = (-128, 127)
    case "uint8": bounds = (0, 255)
    default: throw GlassfinderError.config("quantize: dtype must be int8 or uint8, got \(dtype)")
    }
    let s = Float(scale)  // numpy 2: float32 array / Python float stays float32
    return x.map { Int(max(bounds.lo, min(bounds.hi, ($0 / s).rounded(.toNearestOrEven) + Float(zeroPoint)))) }
}

/// pipeline.dequantize: (q - zeroPoint) * scale in Float.
public func dequantize(_ q: [Int], scale: Double, zeroPoint: Int) -> [Float] { q.map { Float($0 - zeroPoint) * Float(scale) } }

/// pipeline.softmax: Double, returned as Float.
public func softmax(_ logits: [Float]) -> [Float] {
    guard let m = logits.max() else { return [] }
    let e = logits.map { exp(Double($0) - Double(m)) }
    let s = e.reduce(0, +)
    return e.map { Float($0 / s) }
}

/// pipeline.l2_normalize: rows of x (n, d) divided by max(||row||, eps).
public func l2Normalize(_ x: [Float], d: Int, eps: Float = 1e-12) -> [Float] {
    var out = x
    for i in 0..<(x.count / d) {
        var s: Float = 0
        for j in 0..<d { s += x[i * d + j] * x[i * d + j] }
        let norm = max(s.squareRoot(), eps)
        for j in 0..<d { out[i * d + j] = x[i * d + j] / norm }
    }
    return out
}

/// pipeline.gate_decision: (accepted, P(glasses)). softmax of the gate's logits; P(glasses) is the
/// Float sum of the accept classes' probabilities in `accept` order (numpy sums the float32 slice in
/// float32); accepted when it is >= threshold.
public func gateDecision(_ logits: [Float], accept: [Int], threshold: Double) -> (accepted: Bool, pGlasses: Double) {
    let probs = softmax(logits)
    var p: Float = 0
    for j in accept { p += probs[j] }
    return (Double(p) >= threshold, Double(p))
}

/// GlassFinder.accept: indices of the manifest's accept classes, in accept_classes order.
public func acceptIndices(_ settings: GateSettings) throws -> [Int] {
    try settings.acceptClasses.map { c in
        guard let i = settings.classNames.firstIndex(of: c) else { throw GlassfinderError.config("gate: accept class '\(c)' is not in \(settings.classNames)") }
        return i
    }
}

public struct GateDecision { public let accepted: Bool; public let pGlasses: Double; public let probabilities: [String: Float] }

/// GlassFinder.gate_crop after the model: gateDecision on the logits plus the class probabilities by name.
public func gate(_ logits: [Float], _ settings: GateSettings) throws -> GateDecision {
    guard logits.count == settings.classNames.count else {
        throw GlassfinderError.config("gate: \(logits.count) outputs for \(settings.classNames.count) classes")
    }
    let d = gateDecision(logits, accept: try acceptIndices(settings), threshold: settings.threshold)
    let probs = softmax(logits)
    var byName: [String: Float] = [:]
    for (i, name) in settings.classNames.enumerated() { byName[name] = probs[i] }
    return GateDecision(accepted: d.accepted, pGlasses: d.pGlasses, probabilities: byName)
}

// MARK: - Stages as pure functions over model callables (pipeline.detect_faces ... find_face)

/// pipeline.ModelFn: (h, w, 3) pixels -> the model's raw float outputs in manifest order.
public typealias ModelFn = (RgbImage) throws -> [[Float]]

/// A rectangle of the photo, image pixels (what pipeline.detect_faces crops for a tile).
public struct Region: Equatable {
    public let x0, y0, width, height: Int
    public init(x0: Int, y0: Int, width: Int, height: Int) { self.x0 = x0; self.y0 = y0; self.width = width; self.height = height }
}

/// The detector as a ModelFn over a region of the photo: letterbox the region's pixels at the geometry
/// `letterbox` gives (platform resampler, GlassFinder.swift), run the model, return its raw outputs
/// [regressors (n * numCoords), scores (n)].
public typealias DetectorFn = (Region, Letterbox) throws -> [[Float]]

/// pipeline.FaceSearchOptions: how hard to look for a face.
public struct FaceSearchOptions {
    public var refine = 1         // extra aligner passes from the previous mesh
    public var tileRows = 2       // tiled second detector pass when the whole photo gives no confirmed face; 0 = never
    public var maxCandidates = 4  // detections tried per pass, largest first
    public init(refine: Int = 1, tileRows: Int = 2, maxCandidates: Int = 4) {
        self.refine = refine; self.tileRows = tileRows; self.maxCandidates = maxCandidates
    }
}

/// pipeline.detect_faces: all faces of `region` in its own pixels: letterbox -> detector -> decode ->
/// weighted NMS -> project; tileRows > 0: on overlapping square tiles (tileWindows), merged.
public func detectFaces(_ region: Region, _ runDetector: DetectorFn, _ spec: DetectorSettings, anchors: [Float],
                        tileRows: Int = 0) throws -> Detections {
    let size = spec.anchors.inputSize
    if tileRows <= 0 {
        let lb = try letterbox(width: region.width, height: region.height, size: size)
        let raw = try runDetector(region, lb)
        return try postprocess(raw[0], raw[1], letterboxMatrix: lb.matrix, inputSize: size, anchors: anchors, opts: spec.decode)
    }
    var parts: [Detections] = []
    let tiles = tileWindows(width: region.width, height: region.height, rows: tileRows)
    for t in 0..<(tiles.count / 3) {
        let x0 = tiles[3 * t], y0 = tiles[3 * t + 1], side = tiles[3 * t + 2]
        var part = try detectFaces(Region(x0: region.x0 + x0, y0: region.y0 + y0, width: side, height: side), runDetector, spec, anchors: anchors)
        // Tile pixels -> region pixels (Float additions, as numpy's part.boxes + shift).
        let sx = Float(x0), sy = Float(y0)
        part.boxes = part.boxes.enumerated().map { $0.element + ($0.offset % 2 == 0 ? sx : sy) }
        part.keypoints = part.keypoints.enumerated().map { $0.element + ($0.offset % 2 == 0 ? sx : sy) }
        parts.append(part)
    }
    return try merge(parts, iouThreshold: spec.decode.nmsIou, algorithm: spec.decode.nmsAlgorithm)
}

/// pipeline.face_mesh: (numLandmarks * 3) image-pixel mesh and face-presence score for one rotated face roi.
public func faceMesh(_ image: RgbImage, _ roi: FaceRoi, _ runAligner: ModelFn, _ opts: MeshOptions) throws -> ([Float], Double) {
    let A = roiMatrix(roi, size: opts.inputSize)
    let out = try runAligner(cropFace(image, A, size: opts.inputSize))
    return (try decodeLandmarks(out[0], A, numLandmarks: opts.numLandmarks), presenceScore(out[1][0]))
}

/// pipeline.locate_landmarks: mesh of detection i after `refine` re-crops from the mesh (MediaPipe's
/// tracking roi, tighter on tilted heads), and the best presence score of all passes. The re-crops
/// always run: on blurred, dark or small faces the detector's loose roi often scores below the
/// threshold while the re-crop centred on the mesh clears it.
public func locateLandmarks(_ image: RgbImage, _ det: Detections, _ i: Int, _ runAligner: ModelFn, _ opts: MeshOptions,
                            refine: Int = 1) throws -> ([Float], Double) {
    let k = det.numKeypoints
    func kp(_ j: Int) -> [Double] { [Double(det.keypoints[2 * (i * k + j)]), Double(det.keypoints[2 * (i * k + j) + 1])] }
    let box = (0..<4).map { Double(det.boxes[4 * i + $0]) }
    let roi = faceRoi(box: box, rightEye: kp(0), leftEye: kp(1), scale: opts.roiScale)  // detect.FaceKeypoint RIGHT_EYE, LEFT_EYE
    var (mesh, best) = try faceMesh(image, roi, runAligner, opts)
    for _ in 0..<max(refine, 0) {
        let (next, presence) = try faceMesh(image, roiFromMesh(mesh, scale: opts.roiScale), runAligner, opts)
        mesh = next
        best = max(best, presence)
    }
    return (mesh, best)
}

/// pipeline.find_face's result: detections of the pass that confirmed a face (the whole-photo ones if
/// none did), the index of the chosen face or -1, its mesh or nil, its presence score.
public struct FoundFace { public let detections: Detections; public let index: Int; public let mesh: [Float]?; public let presence: Double }

/// pipeline.find_face: the largest detection the aligner confirms (presence >= threshold), from the
/// whole-photo pass, else from the tiled pass.
public func findFace(_ image: RgbImage, _ runDetector: DetectorFn, _ runAligner: ModelFn, _ spec: DetectorSettings,
                     anchors: [Float], meshOpts: MeshOptions, opts: FaceSearchOptions = FaceSearchOptions()) throws -> FoundFace {
    var whole: Detections? = nil
    for tileRows in (opts.tileRows > 0 ? [0, opts.tileRows] : [0]) {
        let det = try detectFaces(Region(x0: 0, y0: 0, width: image.width, height: image.height), runDetector, spec,
                                  anchors: anchors, tileRows: tileRows)
        if whole == nil { whole = det }
        for i in byProminence(det).prefix(max(opts.maxCandidates, 0)) {
            let (mesh, presence) = try locateLandmarks(image, det, i, runAligner, meshOpts, refine: opts.refine)
            if presence >= meshOpts.presenceThreshold { return FoundFace(detections: det, index: i, mesh: mesh, presence: presence) }
        }
    }
    return FoundFace(detections: whole!, index: -1, mesh: nil, presence: 0)
}

/// pipeline.SearchOptions
public struct SearchOptions {
    public var topK = 10                       // results returned
    public var face = FaceSearchOptions()      // how hard to look for a face
    public init(topK: Int = 10, face: FaceSearchOptions = FaceSearchOptions()) { self.topK = topK; self.face = face }
}

/// pipeline.SkuHit: score is the cosine similarity, higher is closer; index is the gallery row.
public struct SkuHit { public let sku: String; public let name: String; public let score: Float; public let index: Int }

/// pipeline.SearchResult: status "ok" or "rejected" (reason "no_face" | "no_glasses").
public struct SearchResult {
    public let status: String, message: String, reason: String?, faces: Int
    public let gateProbs: [String: Float]
    public let results: [SkuHit]
}

/// pipeline.read_sku_metadata: {"skus": [{"sku", "name", ...}, ...]} indexed by gallery id.
public func readSkuMetadata(_ json: String, n: Int, source: String) throws -> [SkuHit] {
    let skus: [SkuHit]
    do {
        skus = try JSONObject.parse(json, source).objects("skus").map { SkuHit(sku: try $0.string("sku"), name: try $0.string("name"), score: 0, index: -1) }
    } catch let GlassfinderError.bundle(m) {
        throw GlassfinderError.bundle("\(source): not a SKU list (\(m))")
    }
    guard skus.count == n else { throw GlassfinderError.bundle("\(source): \(skus.count) SKUs listed but the gallery holds \(n) vectors") }
    return skus
}

/// The rejection message of GlassFinder._rejected.
public func refusal(_ settings: GateSettings, reason: String) -> String {
    settings.refusalMessage + (reason == "no_face" ? " (no face was found)" : " (no glasses are worn on the face)")
}

// Face detection stages (BlazeFace short range). Translation of runtime/detect.py:
//     letterbox -> [model] -> generateAnchors (once) -> decodeBoxes -> weightedNms -> project
// Float where Python computes in float32, Double where it computes in float64.
import Foundation

public enum BoxFormat: String { case xywhCenter = "xywh_center", yxhwCenter = "yxhw_center" }
public enum NmsAlgorithm: String { case weighted, hard }

/// detect.AnchorOptions (defaults: face_detection_short_range, 896 anchors).
public struct AnchorOptions {
    public var inputSize = 128
    public var numLayers = 4
    public var strides = [8, 16, 16, 16]
    public var minScale = 0.1484375
    public var maxScale = 0.75
    public var anchorOffset = 0.5
    public var aspectRatios = [1.0]
    public var interpolatedScaleAspectRatio = 1.0
    public var fixedAnchorSize = true
    public init() {}

    public static func fromJSON(_ o: JSONObject) throws -> AnchorOptions {
        var a = AnchorOptions()
        a.inputSize = try o.int("input_size"); a.numLayers = try o.int("num_layers"); a.strides = try o.ints("strides")
        a.minScale = try o.double("min_scale"); a.maxScale = try o.double("max_scale")
        a.anchorOffset = try o.double("anchor_offset"); a.aspectRatios = try o.doubles("aspect_ratios")
        a.interpolatedScaleAspectRatio = try o.double("interpolated_scale_aspect_ratio")
        a.fixedAnchorSize = try o.bool("fixed_anchor_size")
        return a
    }
}

/// detect.DecodeOptions
public struct DecodeOptions {
    public var numCoords = 16
    public var boxFormat = BoxFormat.xywhCenter
    public var numKeypoints = 6
    public var keypointNames = ["right_eye", "left_eye", "nose_tip", "mouth_centre", "right_ear_tragion", "left_ear_tragion"]
    public var scale = 128.0
    public var scoreClipping = 100.0
    public var minScore = 0.5
    public var nmsAlgorithm = NmsAlgorithm.weighted
    public var nmsIou = 0.3
    public init() {}

    public static func fromJSON(_ o: JSONObject) throws -> DecodeOptions {
        var d = DecodeOptions()
        d.numCoords = try o.int("num_coords")
        guard let bf = BoxFormat(rawValue: try o.string("box_format")) else { throw GlassfinderError.config("\(o.path).box_format: unknown value") }
        d.boxFormat = bf
        d.numKeypoints = try o.int("num_keypoints"); d.keypointNames = try o.strings("keypoint_names")
        d.scale = try o.double("scale"); d.scoreClipping = try o.double("score_clipping"); d.minScore = try o.double("min_score")
        guard let nms = NmsAlgorithm(rawValue: try o.string("nms_algorithm")) else { throw GlassfinderError.config("\(o.path).nms_algorithm: unknown value") }
        d.nmsAlgorithm = nms
        d.nmsIou = try o.double("nms_iou")
        return d
    }
}

/// detect.Detections: boxes (n, 4) x0, y0, x1, y1; keypoints (n, k, 2); scores (n,).
public struct Detections {
    public var boxes: [Float]
    public var keypoints: [Float]
    public var scores: [Float]
    public let numKeypoints: Int
    public var count: Int { scores.count }

    public func areas() -> [Float] {
        (0..<count).map { max(boxes[4 * $0 + 2] - boxes[4 * $0], 0) * max(boxes[4 * $0 + 3] - boxes[4 * $0 + 1], 0) }
    }
}

/// detect.letterbox geometry: resized size, offset, and the image -> input matrix.
public struct Letterbox { public let resizedWidth, resizedHeight, offsetX, offsetY: Int; public let matrix: [Double] }

public func letterbox(width: Int, height: Int, size: Int) throws -> Letterbox {
    guard width >= 1, height >= 1 else { throw GlassfinderError.image("image has an empty size \(width)x\(height)") }
    let s = Double(size) / Double(max(width, height))
    // Python's round() ties to even.
    let nw = max(1, Int((Double(width) * s).rounded(.toNearestOrEven)))
    let nh = max(1, Int((Double(height) * s).rounded(.toNearestOrEven)))
    let ox = Int((Double(size - nw) / 2).rounded(.down)), oy = Int((Double(size - nh) / 2).rounded(.down))
    return Letterbox(resizedWidth: nw, resizedHeight: nh, offsetX: ox, offsetY: oy,
                     matrix: [Double(nw) / Double(width), 0, Double(ox), 0, Double(nh) / Double(height), Double(oy)])
}

/// detect.normalize: (x / 255 - mean) / std in Float, NHWC.
public func normalize(_ pixels: [UInt8], mean: [Double], std: [Double]) -> [Float] {
    let m = mean.map { Float($0) }, s = std.map { Float($0) }
    return pixels.enumerated().map { i, p in (Float(p) / 255 - m[i % 3]) / s[i % 3] }
}

private func calculateScale(_ minScale: Double, _ maxScale: Double, _ i: Int, _ n: Int) -> Double {
    n == 1 ? (minScale + maxScale) * 0.5 : minScale + (maxScale - minScale) * Double(i) / Double(n - 1)
}

/// detect.generate_anchors: (n, 4) x_center, y_center, w, h; order: feature map, row, column, anchor.
public func generateAnchors(_ opts: AnchorOptions = AnchorOptions()) -> [Float] {
    var anchors: [Float] = []
    var layer = 0
    let nStrides = opts.strides.count
    while layer < opts.numLayers {
        var scales: [Double] = [], ratios: [Double] = []
        var last = layer
        while last < opts.numLayers && opts.strides[last] == opts.strides[layer] {
            let scale = calculateScale(opts.minScale, opts.maxScale, last, nStrides)
            for r in opts.aspectRatios { ratios.append(r); scales.append(scale) }
            if opts.interpolatedScaleAspectRatio > 0 {
                let next = last == nStrides - 1 ? 1.0 : calculateScale(opts.minScale, opts.maxScale, last + 1, nStrides)
                scales.append((scale * next).squareRoot())
                ratios.append(opts.interpolatedScaleAspectRatio)
            }
            last += 1
        }
        let fm = Int((Double(opts.inputSize) / Double(opts.strides[layer])).rounded(.up))
        for y in 0..<fm {
            for x in 0..<fm {
                for j in 0..<scales.count {
                    let xc = (Double(x) + opts.anchorOffset) / Double(fm)
                    let yc = (Double(y) + opts.anchorOffset) / Double(fm)
                    if opts.fixedAnchorSize {
                        anchors += [Float(xc), Float(yc), 1, 1]
                    } else {
                        let r = ratios[j].squareRoot()
                        anchors += [Float(xc), Float(yc), Float(scales[j] * r), Float(scales[j] / r)]
                    }
                }
            }
        }
        layer = last
    }
    return anchors
}

/// detect.decode_boxes: every anchor, no thresholding (Float arithmetic, as numpy float32).
public func decodeBoxes(_ rawBoxes: [Float], _ rawScores: [Float], _ anchors: [Float], _ opts: DecodeOptions = DecodeOptions()) throws -> Detections {
    let n = anchors.count / 4
    guard rawBoxes.count == n * opts.numCoords, rawScores.count == n else {
        throw GlassfinderError.config("decodeBoxes: sizes \(rawBoxes.count), \(rawScores.count) do not match \(n) anchors x \(opts.numCoords)")
    }
    let k = opts.numKeypoints, scale = Float(opts.scale), clipping = Float(opts.scoreClipping)
    var boxes = [Float](repeating: 0, count: n * 4), kps = [Float](repeating: 0, count: n * k * 2), scores = [Float](repeating: 0, count: n)
    for i in 0..<n {
        let r = i * opts.numCoords
        let ax = anchors[4 * i], ay = anchors[4 * i + 1], aw = anchors[4 * i + 2], ah = anchors[4 * i + 3]
        var xc, yc, w, h: Float
        if opts.boxFormat == .xywhCenter {
            xc = rawBoxes[r]; yc = rawBoxes[r + 1]; w = rawBoxes[r + 2]; h = rawBoxes[r + 3]
        } else {
            yc = rawBoxes[r]; xc = rawBoxes[r + 1]; h = rawBoxes[r + 2]; w = rawBoxes[r + 3]
        }
        xc = xc / scale * aw + ax
        yc = yc / scale * ah + ay
        w = w / scale * aw
        h = h / scale * ah
        boxes[4 * i] = xc - w / 2; boxes[4 * i + 1] = yc - h / 2; boxes[4 * i + 2] = xc + w / 2; boxes[4 * i + 3] = yc + h / 2
        for j in 0..<k {
            kps[(i * k + j) * 2] = rawBoxes[r + 4 + 2 * j] / scale * aw + ax
            kps[(i * k + j) * 2 + 1] = rawBoxes[r + 5 + 2 * j] / scale * ah + ay
        }
        let logit = min(max(rawScores[i], -clipping), clipping)
        scores[i] = Float(1.0 / (1.0 + exp(-Double(logit))))
    }
    return Detections(boxes: boxes, keypoints: kps, scores: scores, numKeypoints: k)
}

/// detect.iou: IoU of the box at `offset` in `box` with every box of `boxes` (Float).
public func iou(_ box: [Float], _ offset: Int, _ boxes: [Float]) -> [Float] {
    let bx0 = box[offset], by0 = box[offset + 1], bx1 = box[offset + 2], by1 = box[offset + 3]
    let areaB = max(bx1 - bx0, 0) * max(by1 - by0, 0)
    return (0..<(boxes.count / 4)).map { i in
        let x0 = boxes[4 * i], y0 = boxes[4 * i + 1], x1 = boxes[4 * i + 2], y1 = boxes[4 * i + 3]
        let inter = max(min(bx1, x1) - max(bx0, x0), 0) * max(min(by1, y1) - max(by0, y0), 0)
        let union = areaB + max(x1 - x0, 0) * max(y1 - y0, 0) - inter
        return union > 0 ? inter / max(union, 1e-12) : 0
    }
}

/// detect.weighted_nms (thresholds compared in Float, as numpy 2 compares float32 with a Python float).
public func weightedNms(_ det: Detections, minScore: Double, iouThreshold: Double, algorithm: NmsAlgorithm = .weighted) -> Detections {
    let k = det.numKeypoints, minS = Float(minScore), iouT = Float(iouThreshold)
    // Stable: equal scores keep input order.
    var order = (0..<det.count).filter { det.scores[$0] >= minS }
        .enumerated().sorted { a, b in det.scores[a.element] != det.scores[b.element] ? det.scores[a.element] > det.scores[b.element] : a.offset < b.offset }
        .map { $0.element }
    var boxes: [Float] = [], kps: [Float] = [], scores: [Float] = []
    while let best = order.first {
        let ious = iou(det.boxes, 4 * best, det.boxes)
        // The best box is always in its own group: a zero-area box has IoU 0 with itself and would
        // otherwise never leave `order` (an endless loop).
        let group = order.filter { $0 == best || ious[$0] > iouT }
        order = order.filter { $0 != best && ious[$0] <= iouT }
        if algorithm == .weighted {
            var wsum = 0.0
            var b = [Double](repeating: 0, count: 4), p = [Double](repeating: 0, count: 2 * k)
            for g in group {
                let w = Double(det.scores[g])
                wsum += w
                for c in 0..<4 { b[c] += Double(det.boxes[4 * g + c]) * w }
                for c in 0..<(2 * k) { p[c] += Double(det.keypoints[2 * k * g + c]) * w }
            }
            boxes += b.map { Float($0 / wsum) }
            kps += p.map { Float($0 / wsum) }
        } else {
            boxes += det.boxes[(4 * best)..<(4 * best + 4)]
            kps += det.keypoints[(2 * k * best)..<(2 * k * best + 2 * k)]
        }
        scores.append(det.scores[best])
    }
    return Detections(boxes: boxes, keypoints: kps, scores: scores, numKeypoints: k)
}

/// detect.project: normalised input coordinates -> image pixels through the inverse letterbox matrix.
public func project(_ det: Detections, letterboxMatrix: [Double], inputSize: Int) -> Detections {
    let inv = invertAffine(letterboxMatrix)
    func map(_ src: [Float]) -> [Float] { applyAffine(inv, src.map { Double($0 * Float(inputSize)) }).map { Float($0) } }
    return Detections(boxes: map(det.boxes), keypoints: map(det.keypoints), scores: det.scores, numKeypoints: det.numKeypoints)
}

/// detect.tile_windows: overlapping square tiles (k, 3) x0, y0, side for faces too small for the
/// whole-image pass; side = 2 * short side / (rows + 1), tiles overlap by half.
public func tileWindows(width: Int, height: Int, rows: Int = 2) -> [Int] {
    let side = max(1, Int((2.0 * Double(min(width, height)) / Double(rows + 1)).rounded(.toNearestOrEven)))
    func starts(_ length: Int) -> [Int] {
        let n = length <= side ? 1 : Int((Double(length - side) / (Double(side) / 2)).rounded(.up)) + 1
        let stop = Double(max(length - side, 0))
        // np.linspace(0, stop, n).round(): i * (stop / (n - 1)), the last exactly stop, ties to even.
        return (0..<n).map { i in Int((n > 1 && i == n - 1 ? stop : (n > 1 ? Double(i) * (stop / Double(n - 1)) : 0)).rounded(.toNearestOrEven)) }
    }
    let xs = starts(width), ys = starts(height)
    return ys.flatMap { y in xs.flatMap { x in [x, y, side] } }
}

/// detect.merge: detections of several passes (same units) -> one set, overlaps merged.
public func merge(_ parts: [Detections], iouThreshold: Double, algorithm: NmsAlgorithm = .weighted) throws -> Detections {
    guard let first = parts.first else { throw GlassfinderError.config("merge needs at least one Detections") }
    let cat = Detections(boxes: parts.flatMap { $0.boxes }, keypoints: parts.flatMap { $0.keypoints },
                         scores: parts.flatMap { $0.scores }, numKeypoints: first.numKeypoints)
    return weightedNms(cat, minScore: -.infinity, iouThreshold: iouThreshold, algorithm: algorithm)
}

/// detect.by_prominence: indices from the largest face to the smallest (ties: higher score, then index).
public func byProminence(_ det: Detections) -> [Int] {
    let areas = det.areas()
    return (0..<det.count).sorted { a, b in
        areas[a] != areas[b] ? areas[a] > areas[b] : (det.scores[a] != det.scores[b] ? det.scores[a] > det.scores[b] : a < b)
    }
}

/// detect.most_prominent: the largest face (ties: higher score); -1 when there is none.
public func mostProminent(_ det: Detections) -> Int { det.count == 0 ? -1 : byProminence(det)[0] }

/// detect.postprocess: decodeBoxes -> weightedNms -> project.
public func postprocess(_ rawBoxes: [Float], _ rawScores: [Float], letterboxMatrix: [Double], inputSize: Int,
                        anchors: [Float], opts: DecodeOptions) throws -> Detections {
    let det = try decodeBoxes(rawBoxes, rawScores, anchors, opts)
    return project(weightedNms(det, minScore: opts.minScore, iouThreshold: opts.nmsIou, algorithm: opts.nmsAlgorithm),
                   letterboxMatrix: letterboxMatrix, inputSize: inputSize)
}

// Face-mesh stages and the glasses crop. Translation of runtime/landmarks.py and runtime/align.py:
//     faceRoi -> roiMatrix -> cropFace -> [model] -> decodeLandmarks -> glassesKeypoints -> alignCrop
import Foundation

/// landmarks.MeshOptions
public struct MeshOptions {
    public var inputSize = 192
    public var numLandmarks = 468
    public var roiScale = 1.5
    public var presenceThreshold = 0.5
    public var keypointIndices = [33, 133, 362, 263, 168]  // KEYPOINT_NAMES order
    public init() {}

    public static func fromJSON(_ o: JSONObject) throws -> MeshOptions {
        var m = MeshOptions()
        m.inputSize = try o.int("input_size"); m.numLandmarks = try o.int("num_landmarks")
        m.roiScale = try o.double("roi_scale"); m.presenceThreshold = try o.double("presence_threshold")
        m.keypointIndices = try o.ints("keypoint_indices")
        return m
    }
}

/// landmarks.FaceRoi: rotated square in image pixels (angle in radians, positive = clockwise).
public struct FaceRoi { public let cx, cy, side, angle: Double }

/// landmarks.face_roi
public func faceRoi(box: [Double], rightEye: [Double], leftEye: [Double], scale: Double = 1.5) -> FaceRoi {
    let angle = atan2(leftEye[1] - rightEye[1], leftEye[0] - rightEye[0])
    let side = scale * max(box[2] - box[0], box[3] - box[1])
    return FaceRoi(cx: (box[0] + box[2]) / 2, cy: (box[1] + box[3]) / 2, side: side, angle: angle)
}

/// landmarks.roi_matrix: image pixels -> the size x size crop of the roi (rotate by -angle, scale).
public func roiMatrix(_ roi: FaceRoi, size: Int) -> [Double] {
    let s = Double(size) / roi.side, c = cos(roi.angle), n = sin(roi.angle)
    let m00 = s * c, m01 = s * n, m10 = s * -n, m11 = s * c
    let half = Double(size) / 2
    return [m00, m01, half - (m00 * roi.cx + m01 * roi.cy), m10, m11, half - (m10 * roi.cx + m11 * roi.cy)]
}

/// landmarks.crop_face
public func cropFace(_ image: RgbImage, _ A: [Double], size: Int) -> RgbImage { warpAffinePrefiltered(image, A, size, size) }

/// landmarks.presence_score
public func presenceScore(_ faceFlag: Float) -> Double { 1.0 / (1.0 + exp(-min(max(Double(faceFlag), -80), 80))) }  // clipped to +-80, as in Python

/// landmarks.decode_landmarks: raw crop-pixel (numLandmarks * 3) -> image pixels (x, y, z) Float.
public func decodeLandmarks(_ raw: [Float], _ A: [Double], numLandmarks: Int = 468) throws -> [Float] {
    guard raw.count == numLandmarks * 3 else { throw GlassfinderError.config("need \(numLandmarks * 3) values, got \(raw.count)") }
    let inv = invertAffine(A)
    let zScale = abs(inv[0] * inv[4] - inv[1] * inv[3]).squareRoot()
    var out = [Float](repeating: 0, count: raw.count)
    for i in 0..<numLandmarks {
        let x = Double(raw[3 * i]), y = Double(raw[3 * i + 1])
        out[3 * i] = Float(x * inv[0] + y * inv[1] + inv[2])
        out[3 * i + 1] = Float(x * inv[3] + y * inv[4] + inv[5])
        out[3 * i + 2] = Float(Double(raw[3 * i + 2]) * zScale)
    }
    return out
}

/// landmarks.roi_from_mesh: levelled on the outer eye corners (33 -> 263), the mesh's bounding box in
/// that frame, scaled and squared on its long side.
public func roiFromMesh(_ mesh: [Float], scale: Double = 1.5) -> FaceRoi {
    var ex0 = Double(mesh[3 * 263]) - Double(mesh[3 * 33]), ex1 = Double(mesh[3 * 263 + 1]) - Double(mesh[3 * 33 + 1])
    let norm = max((ex0 * ex0 + ex1 * ex1).squareRoot(), 1e-9)  // landmarks._face_axes
    ex0 /= norm
    ex1 /= norm
    let ey0 = -ex1, ey1 = ex0
    var uMin = Double.infinity, uMax = -Double.infinity, vMin = Double.infinity, vMax = -Double.infinity
    for i in 0..<(mesh.count / 3) {
        let x = Double(mesh[3 * i]), y = Double(mesh[3 * i + 1])
        let u = x * ex0 + y * ex1, v = x * ey0 + y * ey1
        uMin = min(uMin, u); uMax = max(uMax, u); vMin = min(vMin, v); vMax = max(vMax, v)
    }
    let cu = (uMin + uMax) / 2, cv = (vMin + vMax) / 2
    return FaceRoi(cx: cu * ex0 + cv * ey0, cy: cu * ex1 + cv * ey1, side: scale * max(uMax - uMin, vMax - vMin), angle: atan2(ex1, ex0))
}

/// landmarks.glasses_keypoints: (5, 2) Float image pixels in KEYPOINT_NAMES order.
public func glassesKeypoints(_ mesh: [Float], _ opts: MeshOptions = MeshOptions()) -> [Float] {
    opts.keypointIndices.flatMap { [mesh[3 * $0], mesh[3 * $0 + 1]] }
}

/// align.align_crop: the (template.height, template.width) crop and the image -> crop matrix.
public func alignCrop(_ image: RgbImage, keypoints: [Double], template: CropTemplate = .standard) throws -> (crop: RgbImage, matrix: [Double]) {
    guard keypoints.count == template.points.count, keypoints.allSatisfy({ $0.isFinite }) else {
        throw GlassfinderError.image("alignCrop needs (\(template.points.count / 2), 2) finite keypoints")
    }
    let A = try cropMatrix(keypoints, template)
    return (warpAffinePrefiltered(image, A, template.width, template.height), A)
}

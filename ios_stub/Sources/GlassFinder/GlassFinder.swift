// The public API over Core ML, with the names of the Python runtime and the Android stub:
//
//     let finder = try GlassFinder.createFromBundle(Bundle.main.url(forResource: "glassfinder", withExtension: nil)!,
//                                                  options: SearchOptions(topK: 10))
//     let result = try finder.search(cgImage)     // off the main thread
//     if result.status == "ok" { show(result.results[0].name) } else { show(result.message) }
//     finder.close()
//
// Every numeric step is a core function checked against the golden vectors (GoldenTests.swift);
// this file only moves data between CGImage, MLModel and the core. Only built where Core ML exists.
#if canImport(CoreML) && canImport(CoreGraphics)
import Accelerate
import CoreGraphics
import CoreML
import Foundation

/// CGImage -> (h, w, 3) RGB bytes, drawn into an sRGB RGBA8 context (alpha dropped).
public func rgbImage(from cg: CGImage) throws -> RgbImage {
    let w = cg.width, h = cg.height
    var rgba = [UInt8](repeating: 0, count: w * h * 4)
    // The context must not outlive the buffer pointer: draw inside withUnsafeMutableBytes.
    let drawn: Bool = rgba.withUnsafeMutableBytes { buf in
        guard let ctx = CGContext(data: buf.baseAddress, width: w, height: h, bitsPerComponent: 8, bytesPerRow: 4 * w,
                                  space: CGColorSpace(name: CGColorSpace.sRGB)!, bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue) else {
            return false
        }
        ctx.draw(cg, in: CGRect(x: 0, y: 0, width: w, height: h))
        return true
    }
    guard drawn else { throw GlassfinderError.image("cannot read a \(w)x\(h) image") }
    var rgb = [UInt8](repeating: 0, count: w * h * 3)
    for i in 0..<(w * h) { rgb[3 * i] = rgba[4 * i]; rgb[3 * i + 1] = rgba[4 * i + 1]; rgb[3 * i + 2] = rgba[4 * i + 2] }
    return try RgbImage(width: w, height: h, pixels: rgb)
}

/// detect.letterbox pixels with vImage's scaler (Accelerate). Like Android's createScaledBitmap it is
/// not Pillow's antialiased bilinear: the matrix is golden-checked, these pixels are not.
func letterboxPixels(_ image: RgbImage, _ lb: Letterbox, size: Int) throws -> RgbImage {
    var src = (0..<(image.width * image.height)).flatMap { [image.pixels[3 * $0], image.pixels[3 * $0 + 1], image.pixels[3 * $0 + 2], 255] }
    var dst = [UInt8](repeating: 0, count: lb.resizedWidth * lb.resizedHeight * 4)
    let err: vImage_Error = src.withUnsafeMutableBytes { s in
        dst.withUnsafeMutableBytes { d in
            var sb = vImage_Buffer(data: s.baseAddress, height: vImagePixelCount(image.height), width: vImagePixelCount(image.width), rowBytes: 4 * image.width)
            var db = vImage_Buffer(data: d.baseAddress, height: vImagePixelCount(lb.resizedHeight), width: vImagePixelCount(lb.resizedWidth), rowBytes: 4 * lb.resizedWidth)
            return vImageScale_ARGB8888(&sb, &db, nil, vImage_Flags(kvImageHighQualityResampling))
        }
    }
    guard err == kvImageNoError else { throw GlassfinderError.image("vImage could not resize the image (error \(err))") }
    var out = try RgbImage(width: size, height: size)
    for y in 0..<lb.resizedHeight {
        for x in 0..<lb.resizedWidth {
            for c in 0..<3 { out.pixels[((y + lb.offsetY) * size + x + lb.offsetX) * 3 + c] = dst[(y * lb.resizedWidth + x) * 4 + c] }
        }
    }
    return out
}

/// One Core ML model of the bundle, fed and read as the manifest entry says.
final class CoreMLStage {
    let entry: ModelEntry
    let model: MLModel

    init(entry: ModelEntry, root: URL, computeUnits: MLComputeUnits) throws {
        self.entry = entry
        let config = MLModelConfiguration()
        config.computeUnits = computeUnits
        // .mlpackage files must be compiled on the device once (cache the .mlmodelc in production).
        let compiled = try MLModel.compileModel(at: root.appendingPathComponent(entry.file))
        model = try MLModel(contentsOf: compiled, configuration: config)
        let inputs = model.modelDescription.inputDescriptionsByName
        guard inputs[entry.input.name] != nil else {
            throw GlassfinderError.bundle("\(entry.file): no input named '\(entry.input.name)' (the model has \(inputs.keys.sorted()))")
        }
        for o in entry.outputs where model.modelDescription.outputDescriptionsByName[o.name] == nil {
            throw GlassfinderError.bundle("\(entry.file): no output named '\(o.name)'")
        }
    }

    /// Run on an RGB image of the input's size; returns every output as Floats, in manifest order.
    func run(_ image: RgbImage) throws -> [[Float]] {
        let spec = entry.input
        let x = preprocess(image.pixels, height: image.height, width: image.width, spec: spec)  // NHWC or NCHW
        let array = try MLMultiArray(shape: spec.shape.map { NSNumber(value: $0) }, dataType: .float32)
        let p = array.dataPointer.bindMemory(to: Float.self, capacity: x.count)
        for i in 0..<x.count { p[i] = x[i] }
        let provider = try MLDictionaryFeatureProvider(dictionary: [spec.name: MLFeatureValue(multiArray: array)])
        let out = try model.prediction(from: provider)
        return try entry.outputs.map { o in
            guard let a = out.featureValue(for: o.name)?.multiArrayValue else { throw GlassfinderError.bundle("\(entry.file): output '\(o.name)' is not an array") }
            return (0..<a.count).map { Float(truncating: a[$0]) }
        }
    }
}

/// The whole on-device pipeline (runtime/pipeline.py GlassFinder). Not thread-safe: one instance
/// per queue, never on the main thread.
public final class GlassFinder {
    let manifest: Manifest
    let options: SearchOptions
    var stages: [String: CoreMLStage]
    let gallery: Gallery
    let skus: [SkuHit]
    let anchors: [Float]

    init(manifest: Manifest, options: SearchOptions, stages: [String: CoreMLStage], gallery: Gallery, skus: [SkuHit]) {
        self.manifest = manifest; self.options = options; self.stages = stages; self.gallery = gallery; self.skus = skus
        anchors = generateAnchors(manifest.detector!.anchors)  // once, as the runtime does
    }

    /// Open and verify the bundle folder (manifest first, every sha256 checked), then load the models.
    public static func createFromBundle(_ root: URL, options: SearchOptions = SearchOptions(), computeUnits: MLComputeUnits = .all) throws -> GlassFinder {
        let bundle = try openBundle(root, format: "mlpackage")
        let m = bundle.manifest
        let missing = [("detector", m.detector == nil), ("aligner", m.aligner == nil), ("gate", m.gate == nil),
                       ("embedder", m.embedder == nil), ("gallery", m.gallery == nil)].filter { $0.1 }.map { $0.0 }
        guard missing.isEmpty, let gallery = bundle.gallery, let skuBytes = bundle.skuBytes else {
            throw GlassfinderError.bundle("\(root.path): the bundle has no \(missing.joined(separator: ", ")) section: it cannot run a search")
        }
        let skus = try readSkuMetadata(String(decoding: skuBytes, as: UTF8.self), n: gallery.n, source: m.gallery!.skuFile)
        var stages: [String: CoreMLStage] = [:]
        for role in ["detector", "aligner", "gate", "embedder"] {
            stages[role] = try CoreMLStage(entry: try m.model(role, format: "mlpackage"), root: root, computeUnits: computeUnits)
        }
        return GlassFinder(manifest: m, options: options, stages: stages, gallery: gallery, skus: skus)
    }

    func run(_ role: String, _ image: RgbImage) throws -> [[Float]] {
        guard let stage = stages[role] else { throw GlassfinderError.config("GlassFinder is closed") }
        return try stage.run(image)
    }

    /// photo -> detector -> aligner -> crop -> gate -> embedder -> PQ search (pipeline.GlassFinder.search).
    public func search(_ photo: CGImage) throws -> SearchResult {
        try ImageLimits().check(width: photo.width, height: photo.height, name: "photo")  // image_io's size policy
        let image = try rgbImage(from: photo)
        let det = manifest.detector!, al = manifest.aligner!, gateSettings = manifest.gate!, emb = manifest.embedder!
        func rejected(_ reason: String, _ faces: Int, _ probs: [String: Float]) -> SearchResult {
            SearchResult(status: "rejected", message: refusal(gateSettings, reason: reason), reason: reason, faces: faces, gateProbs: probs, results: [])
        }

        // 1-2. detector (whole photo, then tiles) and aligner over the candidates (pipeline.find_face)
        let size = det.anchors.inputSize
        let runDetector: DetectorFn = { region, lb in
            var part = image
            if region != Region(x0: 0, y0: 0, width: image.width, height: image.height) {
                part = try RgbImage(width: region.width, height: region.height)
                for y in 0..<region.height {
                    let src = ((region.y0 + y) * image.width + region.x0) * 3
                    part.pixels.replaceSubrange((y * region.width * 3)..<((y + 1) * region.width * 3),
                                                with: image.pixels[src..<(src + region.width * 3)])
                }
            }
            return try self.run("detector", try letterboxPixels(part, lb, size: size))
        }
        let runAligner: ModelFn = { crop in try self.run("aligner", crop) }
        let found = try findFace(image, runDetector, runAligner, det, anchors: anchors, meshOpts: al.mesh, opts: options.face)
        let faces = found.detections
        guard found.index >= 0, let mesh = found.mesh else { return rejected("no_face", faces.count, [:]) }

        // 3. crop
        let kps = glassesKeypoints(mesh, al.mesh).map { Double($0) }
        let crop = try alignCrop(image, keypoints: kps, template: al.template).crop

        // 4. gate (GlassFinder.gate_crop): gateDecision = softmax, P(glasses) of the accept classes vs the threshold
        let decision = try gate(try run("gate", crop)[0], gateSettings)
        if !decision.accepted { return rejected("no_glasses", faces.count, decision.probabilities) }

        // 5. embedder (+ L2 norm outside the int8 graph), 6. PQ search; gallery ids are SKU rows
        var e = try run("embedder", crop)[0]
        if emb.l2Normalize { e = l2Normalize(e, d: emb.dim) }
        let res = try pqSearch(gallery, e, k: options.topK)
        let hits = (0..<res.k).filter { res.I[$0] >= 0 }.map { i -> SkuHit in
            let row = Int(res.I[i])
            return SkuHit(sku: skus[row].sku, name: skus[row].name, score: res.D[i], index: row)
        }
        return SearchResult(status: "ok", message: "", reason: nil, faces: faces.count, gateProbs: decision.probabilities, results: hits)
    }

    /// Releases the models (search then throws), as the runtime's close().
    public func close() { stages = [:] }
}
#endif

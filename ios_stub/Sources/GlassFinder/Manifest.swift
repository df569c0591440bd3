// The bundle manifest (manifest.json), read first. Translation of runtime/manifest.py for what the
// phone uses; every problem throws GlassfinderError.bundle naming the source and the field path.
import Foundation

public let manifestKind = "glassfinder-bundle"
public let manifestName = "manifest.json"
public let manifestReaderVersion = 1
public let supportedSchemaVersions = [1]

/// manifest.TensorSpec (quantized tensors: real = scale * (q - zeroPoint)).
public struct TensorSpec { public let name: String; public let shape: [Int]; public let dtype: String; public let scale: Double?; public let zeroPoint: Int? }

/// manifest.InputSpec; normalization "runtime": feed (p / 255 - mean) / std, "in_graph": feed p / 255.
public struct InputSpec {
    public let name: String, shape: [Int], dtype: String, scale: Double?, zeroPoint: Int?
    public let layout: String, channelOrder: String, normalization: String, mean: [Double], std: [Double]
    public var height: Int { layout == "NHWC" ? shape[1] : shape[2] }
    public var width: Int { layout == "NHWC" ? shape[2] : shape[3] }
}

public struct ModelEntry { public let name, format, file, sha256, quantization: String; public let input: InputSpec; public let outputs: [TensorSpec] }
public struct DetectorSettings { public let anchors: AnchorOptions; public let decode: DecodeOptions; public var numAnchors: Int { generateAnchors(anchors).count / 4 } }
public struct AlignerSettings { public let template: CropTemplate; public let mesh: MeshOptions }
public struct GateSettings { public let classNames, acceptClasses: [String]; public let threshold: Double; public let refusalMessage: String }
public struct EmbedderSettings { public let dim: Int; public let l2Normalize: Bool }
public struct GalleryEntry { public let file, sha256: String; public let spec: PQSpec; public let d: Int; public let n: Int64; public let codeSize: Int; public let skuFile, skuSha256: String }
public struct FileRef { public let file, sha256: String }

public struct Manifest {
    public let schemaVersion, minReaderVersion: Int
    public let createdBy: String
    public let models: [ModelEntry]
    public let detector: DetectorSettings?
    public let aligner: AlignerSettings?
    public let gate: GateSettings?
    public let embedder: EmbedderSettings?
    public let gallery: GalleryEntry?
    public let golden: FileRef?

    public func model(_ name: String, format: String = "mlpackage") throws -> ModelEntry {
        guard let m = models.first(where: { $0.name == name && $0.format == format }) else {
            throw GlassfinderError.bundle("\(manifestName): no \(name) model in \(format) format (the bundle has: \(models.map { "\($0.name)/\($0.format)" }.joined(separator: ", ")))")
        }
        return m
    }

    /// manifest.parse_manifest on the JSON text; `source` names the file in messages.
    public static func parse(_ text: String, source: String = manifestName) throws -> Manifest {
        do {
            return try fromJSON(try JSONObject.parse(text, "manifest"))
        } catch let GlassfinderError.bundle(m) {
            throw GlassfinderError.bundle("\(source): \(m)")
        } catch let GlassfinderError.config(m) {
            throw GlassfinderError.bundle("\(source): \(m)")
        } catch let GlassfinderError.gallery(m) {
            throw GlassfinderError.bundle("\(source): \(m)")
        }
    }

    static func fromJSON(_ o: JSONObject) throws -> Manifest {
        let kind: String? = try o.has("kind") ? o.string("kind") : nil
        guard kind == manifestKind else { throw GlassfinderError.bundle("not a glassfinder bundle manifest (kind is '\(kind ?? "null")', expected '\(manifestKind)')") }
        let minReader = try o.int("min_reader_version"), schema = try o.int("schema_version")
        guard minReader <= manifestReaderVersion else {
            throw GlassfinderError.bundle("this bundle needs reader version \(minReader) or newer; this app reads version \(manifestReaderVersion): update the app")
        }
        guard supportedSchemaVersions.contains(schema) else { throw GlassfinderError.bundle("unknown schema_version \(schema) (this reader knows \(supportedSchemaVersions))") }
        let models = try o.objects("models").map(parseModel)
        for role in ["detector", "aligner", "gate", "embedder"] where models.contains(where: { $0.name == role }) != o.has(role) {
            throw GlassfinderError.bundle("\(role): a model and its '\(role)' settings must come together")
        }
        return Manifest(
            schemaVersion: schema, minReaderVersion: minReader, createdBy: try o.string("created_by"), models: models,
            detector: try o.objOrNil("detector").map { DetectorSettings(anchors: try AnchorOptions.fromJSON(try $0.obj("anchors")), decode: try DecodeOptions.fromJSON(try $0.obj("decode"))) },
            aligner: try o.objOrNil("aligner").map { AlignerSettings(template: try CropTemplate.fromJSON(try $0.obj("template")), mesh: try MeshOptions.fromJSON(try $0.obj("mesh"))) },
            gate: try o.objOrNil("gate").map(parseGate),
            embedder: try o.objOrNil("embedder").map { EmbedderSettings(dim: try $0.int("dim"), l2Normalize: try $0.bool("l2_normalize")) },
            gallery: try o.objOrNil("gallery").map(parseGallery),
            golden: try o.objOrNil("golden").map { FileRef(file: try $0.string("file"), sha256: try $0.string("sha256")) })
    }

    static func optDouble(_ o: JSONObject, _ k: String) throws -> Double? { try o.has(k) ? o.double(k) : nil }
    static func optInt(_ o: JSONObject, _ k: String) throws -> Int? { try o.has(k) ? o.int(k) : nil }

    /// manifest.InputSpec from its JSON object.
    public static func parseInput(_ i: JSONObject) throws -> InputSpec {
        let input = InputSpec(name: try i.string("name"), shape: try i.ints("shape"), dtype: try i.string("dtype"),
                              scale: try optDouble(i, "scale"), zeroPoint: try optInt(i, "zero_point"),
                              layout: try i.string("layout"), channelOrder: try i.string("channel_order"),
                              normalization: try i.string("normalization"), mean: try i.doubles("mean"), std: try i.doubles("std"))
        guard input.shape.count == 4 else { throw GlassfinderError.bundle("\(i.path).shape: an image input must be 4-D") }
        let channels = input.layout == "NHWC" ? input.shape[3] : input.shape[1]
        guard input.mean.count == channels, input.std.count == channels, input.std.allSatisfy({ $0 > 0 }) else {
            throw GlassfinderError.bundle("\(i.path): mean and std need \(channels) values (one per channel), std > 0")
        }
        guard ["runtime", "in_graph"].contains(input.normalization) else {
            throw GlassfinderError.bundle("\(i.path).normalization: unknown value '\(input.normalization)' (expected 'runtime' or 'in_graph')")
        }
        return input
    }

    static func parseModel(_ o: JSONObject) throws -> ModelEntry {
        let input = try parseInput(try o.obj("input"))
        let outputs = try o.objects("outputs").map {
            TensorSpec(name: try $0.string("name"), shape: try $0.ints("shape"), dtype: try $0.string("dtype"),
                       scale: try optDouble($0, "scale"), zeroPoint: try optInt($0, "zero_point"))
        }
        return ModelEntry(name: try o.string("name"), format: try o.string("format"), file: try o.string("file"),
                          sha256: try o.string("sha256"), quantization: try o.string("quantization"), input: input, outputs: outputs)
    }

    static func parseGate(_ o: JSONObject) throws -> GateSettings {
        let names = try o.strings("class_names"), accept = try o.strings("accept_classes"), threshold = try o.double("threshold")
        guard !accept.isEmpty, accept.allSatisfy({ names.contains($0) }) else { throw GlassfinderError.bundle("\(o.path).accept_classes: must be a non-empty subset of class_names") }
        guard (0.0...1.0).contains(threshold) else { throw GlassfinderError.bundle("\(o.path).threshold: must be in [0, 1]") }
        return GateSettings(classNames: names, acceptClasses: accept, threshold: threshold, refusalMessage: try o.string("refusal_message"))
    }

    static func parseGallery(_ o: JSONObject) throws -> GalleryEntry {
        let spec = try parseSpec(try o.string("spec")), d = try o.int("d"), codeSize = try o.int("code_size")
        guard d >= 1, d % spec.M == 0 else { throw GlassfinderError.bundle("\(o.path).d: \(d) must be a positive multiple of M=\(spec.M)") }
        guard codeSize == spec.codeSize else { throw GlassfinderError.bundle("\(o.path).code_size: \(codeSize) disagrees with \(spec)") }
        return GalleryEntry(file: try o.string("file"), sha256: try o.string("sha256"), spec: spec, d: d, n: try o.int64("n"),
                            codeSize: codeSize, skuFile: try o.string("sku_file"), skuSha256: try o.string("sku_sha256"))
    }
}

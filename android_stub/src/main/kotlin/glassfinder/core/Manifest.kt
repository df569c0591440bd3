// The bundle manifest (manifest.json), read first. Translation of runtime/manifest.py for what a
// phone needs: versions, the model entries and their input contracts, and the stage settings,
// turned into the option classes of Detect.kt / Landmarks.kt / Gallery.kt.
//
// Every problem throws BundleException naming the source and the field path, e.g.
// "manifest.json: manifest.models[1].input.mean: expected a number". Unknown fields are ignored
// here (the Python reader, which writes and checks every bundle, refuses them).
package glassfinder.core

const val MANIFEST_KIND = "glassfinder-bundle"
const val MANIFEST_NAME = "manifest.json"
const val MANIFEST_READER_VERSION = 1
val SUPPORTED_SCHEMA_VERSIONS = listOf(1)

/** manifest.TensorSpec: quantized tensors carry real = scale * (q - zeroPoint) (informative: the
 * app reads the real values from the Interpreter's tensor, as the runtime does). */
class TensorSpec(val name: String, val shape: IntArray, val dtype: String, val scale: Double?, val zeroPoint: Int?)

/** manifest.InputSpec. normalization "runtime": feed (p / 255 - mean) / std; "in_graph": feed p / 255. */
class InputSpec(val name: String, val shape: IntArray, val dtype: String, val scale: Double?, val zeroPoint: Int?,
                val layout: String, val channelOrder: String, val normalization: String,
                val mean: DoubleArray, val std: DoubleArray) {
    val height: Int get() = if (layout == "NHWC") shape[1] else shape[2]
    val width: Int get() = if (layout == "NHWC") shape[2] else shape[3]
}

/** manifest.ModelEntry: one model file of one stage (name: detector, aligner, gate, embedder). */
class ModelEntry(val name: String, val format: String, val file: String, val sha256: String, val quantization: String,
                 val input: InputSpec, val outputs: List<TensorSpec>)

/** manifest.DetectorSettings: the runtime's own detect.AnchorOptions / DecodeOptions. */
class DetectorSettings(val anchors: AnchorOptions, val decode: DecodeOptions) {
    /** Anchor count these settings generate (must match the regressor output). */
    val numAnchors: Int get() = generateAnchors(anchors).size / 4
}

/** manifest.AlignerSettings: crop template + landmarks.MeshOptions. */
class AlignerSettings(val template: CropTemplate, val mesh: MeshOptions)

/** manifest.GateSettings: accept when the summed probability of acceptClasses is >= threshold. */
class GateSettings(val classNames: List<String>, val acceptClasses: List<String>, val threshold: Double, val refusalMessage: String)

class EmbedderSettings(val dim: Int, val l2Normalize: Boolean)

/** manifest.GalleryEntry: the .gfpq file, its PQ spec with the metric ("PQ16x8,IP"), d, n, code size, SKU file. */
class GalleryEntry(val file: String, val sha256: String, val spec: PQSpec, val d: Int, val n: Long,
                   val codeSize: Int, val skuFile: String, val skuSha256: String)

class FileRef(val file: String, val sha256: String)

class Manifest(
    val schemaVersion: Int,
    val minReaderVersion: Int,
    val createdBy: String,
    val models: List<ModelEntry>,
    val detector: DetectorSettings?,
    val aligner: AlignerSettings?,
    val gate: GateSettings?,
    val embedder: EmbedderSettings?,
    val gallery: GalleryEntry?,
    val golden: FileRef?
) {
    /** The entry of stage `name` in `format`; BundleException if the bundle has none. */
    fun model(name: String, format: String = "tflite"): ModelEntry =
        models.firstOrNull { it.name == name && it.format == format }
            ?: throw BundleException("$MANIFEST_NAME: no $name model in $format format (the bundle has: " +
                models.joinToString(", ") { "${it.name}/${it.format}" } + ")")

    companion object {
        /** manifest.parse_manifest on the JSON text; `source` names the file in messages. */
        fun parse(text: String, source: String = MANIFEST_NAME): Manifest {
            try {
                val o = JsonObject.parse(text, "manifest")
                return fromJson(o)
            } catch (e: JsonException) {
                throw BundleException("$source: ${e.message}")
            } catch (e: ConfigException) {
                throw BundleException("$source: ${e.message}")
            }
        }

        private fun fromJson(o: JsonObject): Manifest {
            val kind = if (o.has("kind")) o.string("kind") else null
            if (kind != MANIFEST_KIND) throw JsonException("not a glassfinder bundle manifest (kind is '$kind', expected '$MANIFEST_KIND')")
            val minReader = o.int("min_reader_version")
            val schema = o.int("schema_version")
            if (minReader > MANIFEST_READER_VERSION) {
                throw JsonException("this bundle needs reader version $minReader or newer; this app reads version $MANIFEST_READER_VERSION: update the app")
            }
            if (schema !in SUPPORTED_SCHEMA_VERSIONS) throw JsonException("unknown schema_version $schema (this reader knows $SUPPORTED_SCHEMA_VERSIONS)")
            val models = o.objects("models").map { parseModel(it) }
            val m = Manifest(
                schemaVersion = schema, minReaderVersion = minReader, createdBy = o.string("created_by"), models = models,
                detector = o.objOrNull("detector")?.let { parseDetector(it) },
                aligner = o.objOrNull("aligner")?.let { parseAligner(it) },
                gate = o.objOrNull("gate")?.let { parseGate(it) },
                embedder = o.objOrNull("embedder")?.let { EmbedderSettings(it.int("dim"), it.bool("l2_normalize")) },
                gallery = o.objOrNull("gallery")?.let { parseGallery(it) },
                golden = o.objOrNull("golden")?.let { FileRef(it.string("file"), it.string("sha256")) })
            for (role in listOf("detector", "aligner", "gate", "embedder")) {
                val hasModel = models.any { it.name == role }
                if (hasModel != o.has(role)) throw JsonException("$role: a model and its '$role' settings must come together")
            }
            return m
        }

        private fun optDouble(o: JsonObject, key: String): Double? = if (o.has(key)) o.double(key) else null

        private fun optInt(o: JsonObject, key: String): Int? = if (o.has(key)) o.int(key) else null

        private fun parseTensor(o: JsonObject) =
            TensorSpec(o.string("name"), o.ints("shape"), o.string("dtype"), optDouble(o, "scale"), optInt(o, "zero_point"))

        /** manifest.InputSpec from its JSON object. */
        fun parseInput(i: JsonObject): InputSpec {
            val input = InputSpec(i.string("name"), i.ints("shape"), i.string("dtype"), optDouble(i, "scale"),
                optInt(i, "zero_point"), i.string("layout"), i.string("channel_order"), i.string("normalization"),
                i.doubles("mean"), i.doubles("std"))
            if (input.shape.size != 4) throw JsonException("${i.path}.shape: an image input must be 4-D")
            val channels = if (input.layout == "NHWC") input.shape[3] else input.shape[1]
            if (input.mean.size != channels || input.std.size != channels) {
                throw JsonException("${i.path}: mean and std need $channels values (one per channel)")
            }
            if (input.std.any { it <= 0.0 }) throw JsonException("${i.path}.std: must be > 0")
            if (input.normalization != "runtime" && input.normalization != "in_graph") {
                throw JsonException("${i.path}.normalization: unknown value '${input.normalization}' (expected 'runtime' or 'in_graph')")
            }
            return input
        }

        private fun parseModel(o: JsonObject): ModelEntry =
            ModelEntry(o.string("name"), o.string("format"), o.string("file"), o.string("sha256"),
                o.string("quantization"), parseInput(o.obj("input")), o.objects("outputs").map { parseTensor(it) })

        private fun parseDetector(o: JsonObject): DetectorSettings {
            val d = DetectorSettings(AnchorOptions.fromJson(o.obj("anchors")), DecodeOptions.fromJson(o.obj("decode")))
            if (d.decode.keypointNames.size != d.decode.numKeypoints || d.decode.numCoords != 4 + 2 * d.decode.numKeypoints) {
                throw JsonException("${o.path}.decode: num_coords must be 4 + 2 * num_keypoints, one name per keypoint")
            }
            return d
        }

        private fun parseAligner(o: JsonObject) =
            AlignerSettings(CropTemplate.fromJson(o.obj("template")), MeshOptions.fromJson(o.obj("mesh")))

        private fun parseGate(o: JsonObject): GateSettings {
            val names = o.strings("class_names")
            val accept = o.strings("accept_classes")
            if (accept.isEmpty() || accept.any { it !in names }) throw JsonException("${o.path}.accept_classes: must be a non-empty subset of class_names")
            val threshold = o.double("threshold")
            if (threshold < 0.0 || threshold > 1.0) throw JsonException("${o.path}.threshold: must be in [0, 1]")
            return GateSettings(names, accept, threshold, o.string("refusal_message"))
        }

        private fun parseGallery(o: JsonObject): GalleryEntry {
            val spec = try { parseSpec(o.string("spec")) } catch (e: GalleryException) { throw JsonException("${o.path}.spec: ${e.message}") }
            val d = o.int("d")
            if (d < 1 || d % spec.M != 0) throw JsonException("${o.path}.d: $d must be a positive multiple of M=${spec.M}")
            val codeSize = o.int("code_size")
            if (codeSize != spec.codeSize) throw JsonException("${o.path}.code_size: $codeSize disagrees with $spec")
            return GalleryEntry(o.string("file"), o.string("sha256"), spec, d, o.long("n"), codeSize,
                o.string("sku_file"), o.string("sku_sha256"))
        }
    }
}

// ANDROID-ONLY (org.tensorflow:tensorflow-lite): NOT compiled by tests/stubs/test_kotlin_golden.py.
// One model of the bundle behind a TFLite Interpreter, checked against its manifest entry the way
// runtime/bundle.py check_tflite does (names are not checked: the Java API's tensor names may differ
// by converter; shapes and dtypes are).
package glassfinder.android

import glassfinder.core.BundleException
import glassfinder.core.ModelEntry
import glassfinder.core.dequantize
import org.tensorflow.lite.DataType
import org.tensorflow.lite.Interpreter
import java.io.Closeable
import java.nio.ByteBuffer
import java.nio.ByteOrder

class TfliteModel(val entry: ModelEntry, verifiedBytes: ByteArray, numThreads: Int) : Closeable {
    // The Interpreter runs the very bytes that were hash-checked (a direct buffer, as it requires).
    private val interpreter: Interpreter = Interpreter(
        ByteBuffer.allocateDirect(verifiedBytes.size).order(ByteOrder.nativeOrder()).apply { put(verifiedBytes); rewind() },
        Interpreter.Options().setNumThreads(numThreads))

    init {
        val input = interpreter.getInputTensor(0)
        if (interpreter.inputTensorCount != 1 || !input.shape().contentEquals(entry.input.shape) || dtypeName(input.dataType()) != entry.input.dtype) {
            throw BundleException("${entry.file}: the model's input is ${input.shape().toList()} ${input.dataType()}, " +
                "but manifest.json says ${entry.input.shape.toList()} ${entry.input.dtype}")
        }
        if (interpreter.outputTensorCount != entry.outputs.size) {
            throw BundleException("${entry.file}: ${interpreter.outputTensorCount} outputs, manifest.json lists ${entry.outputs.size}")
        }
        for ((i, spec) in entry.outputs.withIndex()) {
            val t = interpreter.getOutputTensor(i)
            if (!t.shape().contentEquals(spec.shape) || dtypeName(t.dataType()) != spec.dtype) {
                throw BundleException("${entry.file}: output $i is ${t.shape().toList()} ${t.dataType()}, manifest.json says ${spec.shape.toList()} ${spec.dtype}")
            }
        }
    }

    val inputScale: Float get() = interpreter.getInputTensor(0).quantizationParams().scale
    val inputZeroPoint: Int get() = interpreter.getInputTensor(0).quantizationParams().zeroPoint

    /** Run once; returns every output as real-valued floats (int8 outputs dequantized with their own params). */
    fun run(input: ByteBuffer): List<FloatArray> {
        val outputs = HashMap<Int, Any>()
        val buffers = (0 until interpreter.outputTensorCount).map { i ->
            val t = interpreter.getOutputTensor(i)
            ByteBuffer.allocateDirect(t.numBytes()).order(ByteOrder.nativeOrder()).also { outputs[i] = it }
        }
        interpreter.runForMultipleInputsOutputs(arrayOf<Any>(input), outputs)
        return buffers.mapIndexed { i, b ->
            b.rewind()
            val t = interpreter.getOutputTensor(i)
            when (t.dataType()) {
                DataType.FLOAT32 -> FloatArray(t.numElements()).also { b.asFloatBuffer().get(it) }
                // pipeline.dequantize with the tensor's own scale and zero point
                DataType.INT8 -> dequantize(IntArray(t.numElements()) { b.get().toInt() },
                    t.quantizationParams().scale.toDouble(), t.quantizationParams().zeroPoint)
                DataType.UINT8 -> dequantize(IntArray(t.numElements()) { b.get().toInt() and 0xFF },
                    t.quantizationParams().scale.toDouble(), t.quantizationParams().zeroPoint)
                else -> throw BundleException("${entry.file}: output $i has unsupported type ${t.dataType()}")
            }
        }
    }

    override fun close() = interpreter.close()

    private fun dtypeName(t: DataType): String = when (t) {
        DataType.FLOAT32 -> "float32"
        DataType.INT8 -> "int8"
        DataType.UINT8 -> "uint8"
        DataType.INT32 -> "int32"
        DataType.INT64 -> "int64"
        else -> t.toString().toLowerCase()
    }
}

// ANDROID-ONLY (android.graphics): NOT compiled by tests/stubs/test_kotlin_golden.py.
// Bitmap <-> the core's RgbImage, the letterbox pixels, and model input buffers.
package glassfinder.android

import android.graphics.Bitmap
import android.graphics.Canvas
import android.graphics.Color
import android.graphics.Paint
import glassfinder.core.InputSpec
import glassfinder.core.Letterbox
import glassfinder.core.RgbImage
import glassfinder.core.preprocess
import glassfinder.core.quantize
import java.nio.ByteBuffer
import java.nio.ByteOrder

/** ARGB Bitmap -> (h, w, 3) RGB bytes (alpha dropped, as PIL's convert("RGB") does for opaque photos). */
fun Bitmap.toRgbImage(): RgbImage {
    val argb = IntArray(width * height)
    getPixels(argb, 0, width, 0, 0, width, height)
    val out = RgbImage(width, height)
    for (i in argb.indices) {
        out.pixels[3 * i] = Color.red(argb[i]).toByte()
        out.pixels[3 * i + 1] = Color.green(argb[i]).toByte()
        out.pixels[3 * i + 2] = Color.blue(argb[i]).toByte()
    }
    return out
}

fun RgbImage.toBitmap(): Bitmap {
    val argb = IntArray(width * height) {
        Color.rgb(pixels[3 * it].toInt() and 0xFF, pixels[3 * it + 1].toInt() and 0xFF, pixels[3 * it + 2].toInt() and 0xFF)
    }
    return Bitmap.createBitmap(argb, width, height, Bitmap.Config.ARGB_8888)
}

/** detect.letterbox pixels: resize with filtering and paste centred on black, at the geometry the
 * core computed. The resampler differs from Pillow's antialiased bilinear (the ONE stage whose
 * pixels are not bit-identical to the runtime; the matrix is, and boxes are compared by IoU). */
fun letterboxPixels(photo: Bitmap, lb: Letterbox, size: Int): RgbImage {
    val canvasBitmap = Bitmap.createBitmap(size, size, Bitmap.Config.ARGB_8888)
    val canvas = Canvas(canvasBitmap)
    canvas.drawColor(Color.BLACK)
    val scaled = Bitmap.createScaledBitmap(photo, lb.resizedWidth, lb.resizedHeight, true)
    canvas.drawBitmap(scaled, lb.offsetX.toFloat(), lb.offsetY.toFloat(), Paint(Paint.FILTER_BITMAP_FLAG))
    if (scaled !== photo) scaled.recycle()
    return canvasBitmap.toRgbImage().also { canvasBitmap.recycle() }
}

/** The model input as the interpreter wants it (pipeline.preprocess, then TfliteModel.__call__):
 * float32, or int8/uint8 quantized (pipeline.quantize) with the tensor's own scale/zero point (read
 * from the interpreter, never hard-coded). */
fun inputBuffer(image: RgbImage, spec: InputSpec, quantScale: Float, quantZeroPoint: Int): ByteBuffer {
    val x = preprocess(image.pixels, image.height, image.width, spec)
    return when (spec.dtype) {
        "float32" -> ByteBuffer.allocateDirect(4 * x.size).order(ByteOrder.nativeOrder()).apply {
            for (v in x) putFloat(v)
            rewind()
        }
        "int8", "uint8" -> ByteBuffer.allocateDirect(x.size).order(ByteOrder.nativeOrder()).apply {
            for (q in quantize(x, quantScale.toDouble(), quantZeroPoint, spec.dtype)) put(q.toByte())
            rewind()
        }
        else -> throw IllegalArgumentException("input dtype ${spec.dtype} is not supported by this stub")
    }
}

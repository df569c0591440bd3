// Reader of golden.txt, the golden vectors written by runtime/golden.py (format documented there):
//
//     # comment
//     <name> <dtype> <ndim> <dim0> ... <dimN-1>
//     <values, row-major, space separated, over one or more lines>
//
// dtypes f32 / f64 / i64, or `str` (shape [1]; the next line is the text). Kept in the core so an
// app can run the same check on a device (GoldenCheck.kt).
package glassfinder.core

class GoldenBlock(val name: String, val dtype: String, val shape: IntArray, private val values: List<String>, val text: String?) {
    val size: Int get() = values.size

    fun doubles(): DoubleArray {
        require(dtype == "f64" || dtype == "f32") { "golden block $name is $dtype, not a float" }
        // f32 values are parsed as float32 first, so they are exactly the float32 the runtime wrote.
        return if (dtype == "f32") DoubleArray(size) { values[it].toFloat().toDouble() } else DoubleArray(size) { values[it].toDouble() }
    }

    fun floats(): FloatArray {
        require(dtype == "f32" || dtype == "f64") { "golden block $name is $dtype, not a float" }
        return FloatArray(size) { values[it].toFloat() }
    }

    fun longs(): LongArray {
        require(dtype == "i64") { "golden block $name is $dtype, not i64" }
        return LongArray(size) { values[it].toLong() }
    }

    fun ints(): IntArray = longs().let { l -> IntArray(l.size) { l[it].toInt() } }

    fun bytes(): ByteArray = longs().let { l -> ByteArray(l.size) { l[it].toByte() } }
}

/** The format this reader understands (golden.txt's `format_version` block). */
const val GOLDEN_FORMAT_VERSION = 1L

class Golden(val blocks: Map<String, GoldenBlock>) {
    /** Names of the blocks read so far: a check can tell which stored stages it never compared. */
    val used = LinkedHashSet<String>()

    operator fun get(name: String): GoldenBlock {
        used.add(name)
        return blocks[name] ?: throw BundleException("golden vectors: no block named '$name' (regenerate with glassfinder_runtime.golden)")
    }

    fun text(name: String): String = get(name).text ?: throw BundleException("golden block '$name' is not a string")

    companion object {
        fun parse(content: String): Golden {
            val lines = content.split("\n")
            val blocks = LinkedHashMap<String, GoldenBlock>()
            var i = 0
            while (i < lines.size) {
                val line = lines[i]
                i += 1
                if (line.length == 0 || line.startsWith("#")) continue
                val head = line.split(" ")
                if (head.size < 3) throw BundleException("golden.txt line $i: bad block header '$line'")
                val ndim = head[2].toInt()
                if (head.size != 3 + ndim) throw BundleException("golden.txt line $i: header has ${head.size - 3} dims, ndim is $ndim")
                val shape = IntArray(ndim) { head[3 + it].toInt() }
                if (head[1] == "str") {
                    blocks[head[0]] = GoldenBlock(head[0], "str", shape, emptyList(), lines[i])
                    i += 1
                    continue
                }
                var count = 1
                for (d in shape) count *= d
                val values = ArrayList<String>(count)
                while (values.size < count) {
                    if (i >= lines.size) throw BundleException("golden.txt: block ${head[0]} is truncated")
                    values.addAll(lines[i].split(" "))
                    i += 1
                }
                if (values.size != count) throw BundleException("golden.txt: block ${head[0]} has ${values.size} values, expected $count")
                blocks[head[0]] = GoldenBlock(head[0], head[1], shape, values, null)
            }
            return Golden(blocks)
        }
    }
}

// A tiny strict JSON reader (RFC 8259) in plain Kotlin, so the core needs no library.
// An Android app may swap in org.json; Manifest.kt only needs `parseJson` and the typed getters.
//
// Values: JSON object -> LinkedHashMap<String, Any?> (key order kept), array -> List<Any?>,
// string -> String, true/false -> Boolean, null -> null, number -> Long when it has no fraction
// or exponent and fits, else Double. Duplicate keys, NaN/Infinity and trailing text are refused
// (the Python reader refuses them too: runtime/bundle.py _read_manifest_json).
package glassfinder.core

class JsonException(message: String) : GlassfinderException(message)

fun parseJson(text: String): Any? {
    val p = JsonParser(text)
    p.skipWhitespace()
    val value = p.readValue(0)
    p.skipWhitespace()
    if (p.pos != text.length) p.fail("unexpected text after the JSON value")
    return value
}

private class JsonParser(val s: String) {
    var pos = 0

    fun fail(what: String): Nothing {
        // Line and column like Python's json module, so messages match the runtime's.
        var line = 1
        var col = 1
        for (i in 0 until minOf(pos, s.length)) {
            if (s[i] == '\n') { line += 1; col = 1 } else col += 1
        }
        throw JsonException("invalid JSON at line $line column $col: $what")
    }

    fun skipWhitespace() {
        while (pos < s.length && (s[pos] == ' ' || s[pos] == '\t' || s[pos] == '\n' || s[pos] == '\r')) pos += 1
    }

    fun readValue(depth: Int): Any? {
        if (depth > 512) fail("nested too deeply")
        if (pos >= s.length) fail("unexpected end of text")
        return when (s[pos]) {
            '{' -> readObject(depth)
            '[' -> readArray(depth)
            '"' -> readString()
            't' -> readWord("true", true)
            'f' -> readWord("false", false)
            'n' -> readWord("null", null)
            else -> readNumber()
        }
    }

    private fun readWord(word: String, value: Any?): Any? {
        if (!s.startsWith(word, pos)) fail("expected a value")
        pos += word.length
        return value
    }

    private fun readObject(depth: Int): Map<String, Any?> {
        val out = LinkedHashMap<String, Any?>()
        pos += 1
        skipWhitespace()
        if (pos < s.length && s[pos] == '}') { pos += 1; return out }
        while (true) {
            skipWhitespace()
            if (pos >= s.length || s[pos] != '"') fail("expected a string key")
            val key = readString()
            if (out.containsKey(key)) fail("duplicate key \"$key\" in an object")
            skipWhitespace()
            if (pos >= s.length || s[pos] != ':') fail("expected ':'")
            pos += 1
            skipWhitespace()
            out[key] = readValue(depth + 1)
            skipWhitespace()
            if (pos < s.length && s[pos] == ',') { pos += 1; continue }
            if (pos < s.length && s[pos] == '}') { pos += 1; return out }
            fail("expected ',' or '}'")
        }
    }

    private fun readArray(depth: Int): List<Any?> {
        val out = ArrayList<Any?>()
        pos += 1
        skipWhitespace()
        if (pos < s.length && s[pos] == ']') { pos += 1; return out }
        while (true) {
            skipWhitespace()
            out.add(readValue(depth + 1))
            skipWhitespace()
            if (pos < s.length && s[pos] == ',') { pos += 1; continue }
            if (pos < s.length && s[pos] == ']') { pos += 1; return out }
            fail("expected ',' or ']'")
        }
    }

    private fun readString(): String {
        pos += 1  // opening quote
        val sb = StringBuilder()
        while (true) {
            if (pos >= s.length) fail("unterminated string")
            val c = s[pos]
            pos += 1
            when {
                c == '"' -> return sb.toString()
                c == '\\' -> {
                    if (pos >= s.length) fail("unterminated escape")
                    val e = s[pos]
                    pos += 1
                    when (e) {
                        '"' -> sb.append('"')
                        '\\' -> sb.append('\\')
                        '/' -> sb.append('/')
                        'b' -> sb.append('\b')
                        'f' -> sb.append('\u000C')
                        'n' -> sb.append('\n')
                        'r' -> sb.append('\r')
                        't' -> sb.append('\t')
                        'u' -> {
                            if (pos + 4 > s.length) fail("bad \\u escape")
                            val hex = s.substring(pos, pos + 4)
                            val code = hex.toIntOrNull(16) ?: fail("bad \\u escape \\u$hex")
                            sb.append(code.toChar())
                            pos += 4
                        }
                        else -> fail("bad escape \\$e")
                    }
                }
                c < ' ' -> fail("control character in a string")
                else -> sb.append(c)
            }
        }
    }

    private fun readNumber(): Any {
        val start = pos
        if (pos < s.length && s[pos] == '-') pos += 1
        if (pos >= s.length || !s[pos].isDigit()) fail("expected a value")
        if (s[pos] == '0') pos += 1 else while (pos < s.length && s[pos].isDigit()) pos += 1
        var integral = true
        if (pos < s.length && s[pos] == '.') {
            integral = false
            pos += 1
            if (pos >= s.length || !s[pos].isDigit()) fail("expected a digit after '.'")
            while (pos < s.length && s[pos].isDigit()) pos += 1
        }
        if (pos < s.length && (s[pos] == 'e' || s[pos] == 'E')) {
            integral = false
            pos += 1
            if (pos < s.length && (s[pos] == '+' || s[pos] == '-')) pos += 1
            if (pos >= s.length || !s[pos].isDigit()) fail("expected a digit in the exponent")
            while (pos < s.length && s[pos].isDigit()) pos += 1
        }
        val text = s.substring(start, pos)
        if (integral) {
            val asLong = text.toLongOrNull()
            if (asLong != null) return asLong
        }
        val d = text.toDouble()
        if (d.isInfinite()) fail("number $text is out of range")
        return d
    }
}

// ---- typed access with the field path in every message (manifest.models[1].input.mean: ...) ----

/** A JSON object plus its path, for messages that name the field. */
class JsonObject(val map: Map<String, Any?>, val path: String) {
    fun has(key: String): Boolean = map.containsKey(key) && map[key] != null

    private fun raw(key: String): Any? {
        if (!map.containsKey(key)) throw JsonException("$path.$key: missing field")
        return map[key]
    }

    fun obj(key: String): JsonObject {
        val v = raw(key) as? Map<*, *> ?: throw JsonException("$path.$key: expected an object")
        @Suppress("UNCHECKED_CAST")
        return JsonObject(v as Map<String, Any?>, "$path.$key")
    }

    fun objOrNull(key: String): JsonObject? = if (has(key)) obj(key) else null

    fun list(key: String): List<Any?> = raw(key) as? List<Any?> ?: throw JsonException("$path.$key: expected a list")

    fun objects(key: String): List<JsonObject> = list(key).mapIndexed { i, v ->
        @Suppress("UNCHECKED_CAST")
        val m = v as? Map<String, Any?> ?: throw JsonException("$path.$key[$i]: expected an object")
        JsonObject(m, "$path.$key[$i]")
    }

    fun string(key: String): String = raw(key) as? String ?: throw JsonException("$path.$key: expected a string")

    fun bool(key: String): Boolean = raw(key) as? Boolean ?: throw JsonException("$path.$key: expected true or false")

    fun long(key: String): Long = raw(key) as? Long ?: throw JsonException("$path.$key: expected an integer")

    fun int(key: String): Int {
        val v = long(key)
        if (v < Int.MIN_VALUE || v > Int.MAX_VALUE) throw JsonException("$path.$key: integer $v is out of range")
        return v.toInt()
    }

    fun double(key: String): Double = asDouble(raw(key), "$path.$key")

    fun doubles(key: String): DoubleArray {
        val l = list(key)
        return DoubleArray(l.size) { asDouble(l[it], "$path.$key[$it]") }
    }

    fun ints(key: String): IntArray {
        val l = list(key)
        return IntArray(l.size) { (l[it] as? Long)?.toInt() ?: throw JsonException("$path.$key[$it]: expected an integer") }
    }

    fun strings(key: String): List<String> = list(key).mapIndexed { i, v ->
        v as? String ?: throw JsonException("$path.$key[$i]: expected a string")
    }

    companion object {
        fun parse(text: String, path: String): JsonObject {
            @Suppress("UNCHECKED_CAST")
            val m = parseJson(text) as? Map<String, Any?> ?: throw JsonException("$path: expected a JSON object at the top level")
            return JsonObject(m, path)
        }

        fun asDouble(v: Any?, path: String): Double = when (v) {
            is Long -> v.toDouble()
            is Double -> v
            else -> throw JsonException("$path: expected a number")
        }
    }
}

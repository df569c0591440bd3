// PQ gallery: the spec, the .gfpq reader and the asymmetric-distance search (ADC with lookup
// tables). Translation of runtime/gallery.py (file layout: docs/gallery_format.md).
//
// Search contract (faiss's): D (nq, k) float32, I (nq, k) int64 ids, best first; IP: D is the
// inner product, descending; L2: D is the squared distance, ascending; -1 / -inf (IP) / +inf (L2)
// pad rows when k > n; ties go to the lower gallery position.
// Refine(SQ8): the top max(k, shortlist) ADC rows are re-scored with per-dimension int8 codes
// (x_hat_ij = scale_j * code_ij, unrotated space) and the best k of them are returned.
package glassfinder.core

import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.util.zip.CRC32

/** gallery.Metric; `code` is the number stored in the file (faiss's MetricType). */
enum class Metric(val code: Int) { IP(0), L2(1) }

/** gallery.REFINE_KINDS: refine codes this reader knows ("SQ8": one int8 per dimension). */
val REFINE_KINDS = listOf("SQ8")
/** gallery.SQ8_MAX: SQ8 codes are -127..127. */
const val SQ8_MAX = 127
/** gallery.DEFAULT_SHORTLIST: ADC rows re-ranked by the refine stage when nothing else is given. */
const val DEFAULT_SHORTLIST = 64

/** gallery.PQSpec: M sub-quantizers of 2^nbits centroids, the metric, an optional OPQ rotation,
 * and an optional refine stage ("SQ8"). */
class PQSpec(val M: Int, val nbits: Int, val metric: Metric, val opq: Boolean = false, val refine: String? = null) {
    init {
        if (M < 1) throw GalleryException("PQ spec needs M >= 1 sub-quantizers, got M=$M")
        if (nbits < 4 || nbits > 8) throw GalleryException("PQ spec nbits=$nbits is not supported: nbits must be in 4..8")
        if (refine != null && refine !in REFINE_KINDS) throw GalleryException("PQ spec refine kind '$refine' is not supported: use Refine(SQ8) or no refine")
    }

    val ksub: Int get() = 1 shl nbits
    /** PQ code bytes per vector (the manifest's code_size). */
    val codeSize: Int get() = M
    /** Refine code bytes per vector of dimension d (SQ8: one per dimension). */
    fun refineCodeSize(d: Int): Int = if (refine == "SQ8") d else 0

    fun dsub(d: Int): Int {
        if (d < 1 || d % M != 0) throw GalleryException("PQ spec $this: M=$M must divide the vector dimension d=$d")
        return d / M
    }

    override fun toString(): String =
        (if (opq) "OPQ$M," else "") + "PQ${M}x$nbits,${metric.name}" + (if (refine != null) ",Refine($refine)" else "")
}

private val SPEC_RE = Regex("^(?:OPQ(\\d+),)?PQ(\\d+)x(\\d+),([A-Z0-9]+)(?:,Refine\\(([^()]*)\\))?$")

/** gallery.parse_spec: "PQ16x8,IP" / "OPQ16,PQ16x8,IP,Refine(SQ8)" -> PQSpec; parseSpec(s).toString() == s. */
fun parseSpec(text: String): PQSpec {
    val m = SPEC_RE.matchEntire(text.trim())
        ?: throw GalleryException("PQ spec '$text' is invalid: write it as [OPQ<M>,]PQ<M>x<nbits>,<metric>[,Refine(SQ8)], e.g. 'PQ16x8,IP'")
    // An absent optional group is "" in groupValues; "Refine()" is present but empty (rejected below).
    val refine = if (m.groups[5] != null) m.groupValues[5] else null
    if (refine != null && refine !in REFINE_KINDS) throw GalleryException("PQ spec '$text': unknown refine kind '$refine', supported: Refine(SQ8)")
    val opqM = m.groupValues[1]
    val M = m.groupValues[2].toInt()
    val metric = Metric.values().firstOrNull { it.name == m.groupValues[4] }
        ?: throw GalleryException("PQ spec '$text': unknown metric '${m.groupValues[4]}', use IP or L2")
    if (opqM.isNotEmpty() && opqM.toInt() != M) throw GalleryException("PQ spec '$text': OPQ$opqM must match the PQ's M=$M")
    return PQSpec(M, m.groupValues[3].toInt(), metric, opqM.isNotEmpty(), refine)
}

/** gallery.Gallery: codebooks (M, ksub, dsub) float32, codes (n, M) bytes, ids (n,), rotation (d, d) or null;
 * with Refine(SQ8): refineScales (d,) > 0 and refineCodes (n, d) int8 (-127..127), `shortlist` >= 1. */
class Gallery(val spec: PQSpec, val d: Int, val codebooks: FloatArray, val codes: ByteArray, val ids: LongArray,
              val rotation: FloatArray? = null, val refineScales: FloatArray? = null, val refineCodes: ByteArray? = null,
              val shortlist: Int = DEFAULT_SHORTLIST) {
    val n: Int get() = ids.size
    val dsub: Int = spec.dsub(d)

    init {
        if (codebooks.size != spec.M * spec.ksub * dsub) throw GalleryException("codebooks must have ${spec.M * spec.ksub * dsub} values")
        if (codes.size != n * spec.M) throw GalleryException("${ids.size} ids for ${codes.size / spec.M} codes")
        if (spec.opq != (rotation != null)) throw GalleryException("spec $spec and the OPQ rotation disagree")
        if (rotation != null && rotation.size != d * d) throw GalleryException("rotation must be ($d, $d)")
        if (ids.any { it < 0 }) throw GalleryException("ids out of range: ids must be >= 0 (-1 means 'no result')")
        if (ids.toSet().size != ids.size) throw GalleryException("duplicate ids")
        if (spec.nbits < 8 && codes.any { (it.toInt() and 0xFF) >= spec.ksub }) {
            throw GalleryException("codes out of range for nbits=${spec.nbits}")
        }
        if ((spec.refine != null) != (refineScales != null && refineCodes != null)) {
            throw GalleryException("spec $spec and the refine scales/codes disagree")
        }
        if (refineScales != null && refineCodes != null) {
            if (refineScales.size != d) throw GalleryException("refine scales must have $d values")
            if (refineCodes.size != n * d) throw GalleryException("refine codes must be ($n, $d)")
            if (refineScales.any { !(it > 0f) || it.isInfinite() }) throw GalleryException("refine scales must be finite and > 0")
            if (refineCodes.any { it < -SQ8_MAX }) throw GalleryException("refine codes out of range: SQ8 codes are -$SQ8_MAX..$SQ8_MAX")
            if (shortlist < 1) throw GalleryException("refine shortlist must be >= 1, got $shortlist")
        }
    }

    /** Sub-code m of row i, 0..ksub-1. */
    fun code(i: Int, m: Int): Int = codes[i * spec.M + m].toInt() and 0xFF
}

const val GFPQ_HEADER_SIZE = 64
const val GFPQ_READER_VERSION = 2
private const val FLAG_OPQ = 1
private const val FLAG_REFINE_SQ8 = 2

/** gallery.gallery_from_bytes: parse and validate a .gfpq file, version 1 or 2 (little-endian). */
fun galleryFromBytes(data: ByteArray): Gallery {
    if (data.size < 4 || String(data, 0, 4, Charsets.ISO_8859_1) != "GFPQ") {
        throw GalleryException("bad magic: not a glassfinder PQ gallery (expected 'GFPQ')")
    }
    if (data.size < GFPQ_HEADER_SIZE) throw GalleryException("truncated header: file is ${data.size} bytes, the header alone is $GFPQ_HEADER_SIZE")
    val bb = ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN)
    // magic, version u16, min_reader_version u16, header_size, d, M, nbits, metric, flags (u32), n (u64)
    val version = bb.getShort(4).toInt() and 0xFFFF
    val minReader = bb.getShort(6).toInt() and 0xFFFF
    val headerSize = bb.getInt(8)
    val d = bb.getInt(12)
    val M = bb.getInt(16)
    val nbits = bb.getInt(20)
    val metricCode = bb.getInt(24)
    val flags = bb.getInt(28)
    val n = bb.getLong(32)
    val shortlist = bb.getInt(40)  // version 2, refine only (reserved bytes in version 1)
    if (minReader > GFPQ_READER_VERSION) throw GalleryException("unsupported version: file version $version needs a reader of version >= $minReader")
    if (headerSize != GFPQ_HEADER_SIZE) throw GalleryException("header size $headerSize is not $GFPQ_HEADER_SIZE")
    if (flags and (FLAG_OPQ or FLAG_REFINE_SQ8).inv() != 0) throw GalleryException("unknown header flags 0x${Integer.toHexString(flags)}")
    val metric = Metric.values().firstOrNull { it.code == metricCode }
        ?: throw GalleryException("unknown metric code $metricCode in the header (0 = IP, 1 = L2)")
    val refine = if (flags and FLAG_REFINE_SQ8 != 0) "SQ8" else null
    if (refine != null && shortlist < 1) throw GalleryException("refine shortlist $shortlist in the header is invalid: it must be >= 1")
    val spec = PQSpec(M, nbits, metric, flags and FLAG_OPQ != 0, refine)
    val dsub = spec.dsub(d)
    if (n < 0 || n > Int.MAX_VALUE / maxOf(M + spec.refineCodeSize(d), 8)) throw GalleryException("n=$n is too large for this reader")
    val ni = n.toInt()
    val cbBytes = M * spec.ksub * dsub * 4
    val rotBytes = if (spec.opq) d * d * 4 else 0
    val codesOffset = GFPQ_HEADER_SIZE + cbBytes + rotBytes
    val afterCodes = codesOffset + ni * M
    val pad = Math.floorMod(-afterCodes, 8)  // ids are 8-byte aligned
    val idsOffset = afterCodes + pad
    val scalesOffset = idsOffset + ni * 8  // version 2: refine scales (d,) f32, then codes (n, d) i8
    val refineOffset = scalesOffset + (if (refine != null) d * 4 else 0)
    val expected = refineOffset + ni * spec.refineCodeSize(d) + 4
    if (data.size < expected) throw GalleryException("truncated: file is ${data.size} bytes, the header (d=$d, $spec, n=$n) needs $expected")
    if (data.size > expected) throw GalleryException("${data.size - expected} unexpected trailing bytes after the checksum")
    val crc = CRC32()
    crc.update(data, 0, expected - 4)
    val stored = bb.getInt(expected - 4).toLong() and 0xFFFFFFFFL
    if (stored != crc.value) throw GalleryException("checksum mismatch: stored CRC32 ${java.lang.Long.toHexString(stored)}, computed ${java.lang.Long.toHexString(crc.value)}")
    for (i in afterCodes until idsOffset) if (data[i].toInt() != 0) throw GalleryException("non-zero padding bytes before the ids section")
    val codebooks = FloatArray(M * spec.ksub * dsub) { bb.getFloat(GFPQ_HEADER_SIZE + 4 * it) }
    val rotation = if (spec.opq) FloatArray(d * d) { bb.getFloat(GFPQ_HEADER_SIZE + cbBytes + 4 * it) } else null
    val codes = data.copyOfRange(codesOffset, afterCodes)
    val ids = LongArray(ni) { bb.getLong(idsOffset + 8 * it) }
    val refineScales = if (refine != null) FloatArray(d) { bb.getFloat(scalesOffset + 4 * it) } else null
    val refineCodes = if (refine != null) data.copyOfRange(refineOffset, refineOffset + ni * d) else null
    return Gallery(spec, d, codebooks, codes, ids, rotation, refineScales, refineCodes,
                   if (refine != null) shortlist else DEFAULT_SHORTLIST)
}

/** x (n, d) @ rotation.T, float32 (OPQ). */
fun rotate(x: FloatArray, rotation: FloatArray, d: Int): FloatArray {
    val out = FloatArray(x.size)
    for (i in 0 until x.size / d) {
        for (r in 0 until d) {
            var s = 0f
            for (j in 0 until d) s += x[i * d + j] * rotation[r * d + j]
            out[i * d + r] = s
        }
    }
    return out
}

/** gallery.encode: PQ codes (n, M) of x (n, d): per sub-vector, the nearest centroid (L2). One-shot
 * enrollment with existing codebooks. */
fun encode(codebooks: FloatArray, M: Int, ksub: Int, x: FloatArray, rotation: FloatArray? = null): ByteArray {
    val dsub = codebooks.size / (M * ksub)
    val d = M * dsub
    val xr = if (rotation != null) rotate(x, rotation, d) else x
    val n = xr.size / d
    val codes = ByteArray(n * M)
    val halfNorms = FloatArray(M * ksub) { c ->
        var s = 0f
        for (j in 0 until dsub) s += codebooks[c * dsub + j] * codebooks[c * dsub + j]
        0.5f * s
    }
    for (i in 0 until n) {
        for (m in 0 until M) {
            // argmin ||x - c||^2 = argmax x.c - ||c||^2 / 2 (||x||^2 is constant per row); first maximum wins.
            var best = 0
            var bestScore = Float.NEGATIVE_INFINITY
            for (c in 0 until ksub) {
                var dot = 0f
                for (j in 0 until dsub) dot += xr[i * d + m * dsub + j] * codebooks[(m * ksub + c) * dsub + j]
                val score = dot - halfNorms[m * ksub + c]
                if (score > bestScore) { bestScore = score; best = c }
            }
            codes[i * M + m] = best.toByte()
        }
    }
    return codes
}

/** gallery.sq8_encode: (n, d) int8 codes clip(round(x / scale), -127, 127), rounding half to even
 * (Math.rint, as numpy's round); the division is float32, as in numpy. One-shot enrollment. */
fun sq8Encode(scales: FloatArray, x: FloatArray): ByteArray {
    val d = scales.size
    return ByteArray(x.size) { i ->
        val r = Math.rint((x[i] / scales[i % d]).toDouble())
        maxOf(-SQ8_MAX.toDouble(), minOf(SQ8_MAX.toDouble(), r)).toInt().toByte()
    }
}

/** gallery._lookup_tables: (nq, M, ksub) float32 scores per sub-code, HIGHER IS BETTER for both
 * metrics. IP: <xq_m, c>. L2: -||xq_m - c||^2 = 2 <xq_m, c> - ||c||^2 - ||xq_m||^2.
 * xq must already be rotated (OPQ). */
fun lookupTables(g: Gallery, xq: FloatArray): FloatArray {
    val M = g.spec.M
    val ksub = g.spec.ksub
    val dsub = g.dsub
    val nq = xq.size / g.d
    val lut = FloatArray(nq * M * ksub)
    for (q in 0 until nq) {
        for (m in 0 until M) {
            var qn = 0f
            for (j in 0 until dsub) qn += xq[q * g.d + m * dsub + j] * xq[q * g.d + m * dsub + j]
            for (c in 0 until ksub) {
                var ip = 0f
                var cn = 0f
                for (j in 0 until dsub) {
                    val cv = g.codebooks[(m * ksub + c) * dsub + j]
                    ip += cv * xq[q * g.d + m * dsub + j]
                    cn += cv * cv
                }
                lut[(q * M + m) * ksub + c] = if (g.spec.metric == Metric.IP) ip else 2f * ip - cn - qn
            }
        }
    }
    return lut
}

/** pq_search's (D, I), faiss layout: D (nq, k) float32 and I (nq, k) ids, row-major. */
class PqResult(val D: FloatArray, val I: LongArray, val k: Int)

/** gallery.pq_search: the k best gallery vectors for each of the nq queries xq (nq, d). */
fun pqSearch(g: Gallery, xq: FloatArray, k: Int): PqResult {
    if (k < 1) throw GalleryException("k must be a positive integer, got $k")
    if (xq.size % g.d != 0) throw GalleryException("query vectors must have shape (n, ${g.d}), got ${xq.size} values")
    if (xq.any { it.isNaN() || it.isInfinite() }) throw GalleryException("query vectors contain NaN or infinity")
    val x = if (g.rotation != null) rotate(xq, g.rotation, g.d) else xq
    val nq = x.size / g.d
    val M = g.spec.M
    val ksub = g.spec.ksub
    val lut = lookupTables(g, x)
    val ip = g.spec.metric == Metric.IP
    val D = FloatArray(nq * k) { if (ip) Float.NEGATIVE_INFINITY else Float.POSITIVE_INFINITY }
    val I = LongArray(nq * k) { -1L }
    val scores = FloatArray(g.n)
    val refineScales = g.refineScales
    val refineCodes = g.refineCodes
    for (q in 0 until nq) {
        val base = q * M * ksub
        // Scores: sum of the table entries of each sub-code, in sub-quantizer order (float32).
        for (i in 0 until g.n) {
            var s = lut[base + g.code(i, 0)]
            for (m in 1 until M) s += lut[base + m * ksub + g.code(i, m)]
            scores[i] = s
        }
        if (refineScales == null || refineCodes == null) {
            val top = topK(scores, minOf(k, g.n))
            for ((r, pos) in top.withIndex()) {
                D[q * k + r] = if (ip) scores[pos] else -scores[pos]
                I[q * k + r] = g.ids[pos]
            }
            continue
        }
        // Refine: the shortlist in gallery order (so refined ties go to the lower position), re-scored
        // against the UNROTATED query with x_hat_j = scale_j * code_j (float32, dimension order).
        val rows = topK(scores, minOf(g.n, maxOf(k, g.shortlist)))
        rows.sort()
        val refined = FloatArray(rows.size) { r ->
            val base = rows[r] * g.d
            var s = 0f
            for (j in 0 until g.d) {
                val xHat = refineScales[j] * refineCodes[base + j].toFloat()
                val qj = xq[q * g.d + j]
                s += if (ip) qj * xHat else (qj - xHat) * (qj - xHat)
            }
            if (ip) s else -s  // higher is better, as in the ADC tables
        }
        for ((r, i) in topK(refined, minOf(k, rows.size)).withIndex()) {
            D[q * k + r] = if (ip) refined[i] else -refined[i]
            I[q * k + r] = g.ids[rows[i]]
        }
    }
    return PqResult(D, I, k)
}

/** gallery._top_k: positions of the k highest scores, best first; ties go to the lower position.
 * A bounded insertion list: O(n k), fine for the k <= 100 an app asks for. */
fun topK(scores: FloatArray, k: Int): IntArray {
    if (k <= 0) return IntArray(0)
    val pos = IntArray(k)
    var count = 0
    for (i in scores.indices) {
        val s = scores[i]
        if (count == k && s <= scores[pos[k - 1]]) continue  // not better than the worst kept (ties: earlier wins)
        var j = if (count < k) count else k - 1
        while (j > 0 && scores[pos[j - 1]] < s) {
            pos[j] = pos[j - 1]
            j -= 1
        }
        pos[j] = i
        if (count < k) count += 1
    }
    return pos.copyOf(count)
}

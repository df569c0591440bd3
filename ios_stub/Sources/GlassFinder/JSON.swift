// A tiny strict JSON reader (the Kotlin stub's Json.kt, line for line), so the numeric core needs
// no Foundation JSON quirks (JSONSerialization turns booleans into NSNumbers on some platforms).
// object -> [String: Any], array -> [Any], string -> String, true/false -> Bool, null -> NSNull,
// number -> Int64 without fraction/exponent, else Double. Duplicate keys and trailing text are refused.
import Foundation

public func parseJSON(_ text: String) throws -> Any {
    var p = JSONParser(Array(text.unicodeScalars))
    p.skipWhitespace()
    let v = try p.readValue(0)
    p.skipWhitespace()
    if p.pos != p.s.count { throw p.fail("unexpected text after the JSON value") }
    return v
}

struct JSONParser {
    let s: [Unicode.Scalar]
    var pos = 0
    init(_ s: [Unicode.Scalar]) { self.s = s }

    func fail(_ what: String) -> GlassfinderError {
        var line = 1, col = 1
        for i in 0..<min(pos, s.count) { if s[i] == "\n" { line += 1; col = 1 } else { col += 1 } }
        return .bundle("invalid JSON at line \(line) column \(col): \(what)")
    }

    static let whitespace: Set<Unicode.Scalar> = [" ", "\t", "\n", "\r"]

    mutating func skipWhitespace() {
        while pos < s.count, JSONParser.whitespace.contains(s[pos]) { pos += 1 }
    }

    mutating func readValue(_ depth: Int) throws -> Any {
        if depth > 512 { throw fail("nested too deeply") }
        guard pos < s.count else { throw fail("unexpected end of text") }
        switch s[pos] {
        case "{": return try readObject(depth)
        case "[": return try readArray(depth)
        case "\"": return try readString()
        case "t": return try readWord("true", true)
        case "f": return try readWord("false", false)
        case "n": return try readWord("null", NSNull())
        default: return try readNumber()
        }
    }

    mutating func readWord(_ word: String, _ value: Any) throws -> Any {
        let w = Array(word.unicodeScalars)
        guard pos + w.count <= s.count, Array(s[pos..<(pos + w.count)]) == w else { throw fail("expected a value") }
        pos += w.count
        return value
    }

    mutating func readObject(_ depth: Int) throws -> [String: Any] {
        var out: [String: Any] = [:]
        pos += 1
        skipWhitespace()
        if pos < s.count && s[pos] == "}" { pos += 1; return out }
        while true {
            skipWhitespace()
            guard pos < s.count, s[pos] == "\"" else { throw fail("expected a string key") }
            let key = try readString()
            if out[key] != nil { throw fail("duplicate key \"\(key)\" in an object") }
            skipWhitespace()
            guard pos < s.count, s[pos] == ":" else { throw fail("expected ':'") }
            pos += 1
            skipWhitespace()
            out[key] = try readValue(depth + 1)
            skipWhitespace()
            if pos < s.count && s[pos] == "," { pos += 1; continue }
            if pos < s.count && s[pos] == "}" { pos += 1; return out }
            throw fail("expected ',' or '}'")
        }
    }

    mutating func readArray(_ depth: Int) throws -> [Any] {
        var out: [Any] = []
        pos += 1
        skipWhitespace()
        if pos < s.count && s[pos] == "]" { pos += 1; return out }
        while true {
            skipWhitespace()
            out.append(try readValue(depth + 1))
            skipWhitespace()
            if pos < s.count && s[pos] == "," { pos += 1; continue }
            if pos < s.count && s[pos] == "]" { pos += 1; return out }
            throw fail("expected ',' or ']'")
        }
    }

    mutating func readString() throws -> String {
        pos += 1
        var out = String.UnicodeScalarView()
        while true {
            guard pos < s.count else { throw fail("unterminated string") }
            let c = s[pos]
            pos += 1
            if c == "\"" { return String(out) }
            if c == "\\" {
                guard pos < s.count else { throw fail("unterminated escape") }
                let e = s[pos]
                pos += 1
                switch e {
                case "\"": out.append("\"")
                case "\\": out.append("\\")
                case "/": out.append("/")
                case "b": out.append(Unicode.Scalar(UInt8(8)))
                case "f": out.append(Unicode.Scalar(UInt8(12)))
                case "n": out.append("\n")
                case "r": out.append("\r")
                case "t": out.append("\t")
                case "u":
                    guard pos + 4 <= s.count, let code = UInt32(String(String.UnicodeScalarView(s[pos..<(pos + 4)])), radix: 16) else {
                        throw fail("bad \\u escape")
                    }
                    pos += 4
                    out.append(Unicode.Scalar(code) ?? "\u{FFFD}")  // lone surrogates become U+FFFD
                default: throw fail("bad escape \\\(e)")
                }
            } else if c.value < 0x20 {
                throw fail("control character in a string")
            } else {
                out.append(c)
            }
        }
    }

    mutating func readNumber() throws -> Any {
        let start = pos
        func digit(_ i: Int) -> Bool { i < s.count && s[i].value >= 48 && s[i].value <= 57 }
        if pos < s.count && s[pos] == "-" { pos += 1 }
        guard digit(pos) else { throw fail("expected a value") }
        if s[pos] == "0" { pos += 1 } else { while digit(pos) { pos += 1 } }
        var integral = true
        if pos < s.count && s[pos] == "." {
            integral = false
            pos += 1
            guard digit(pos) else { throw fail("expected a digit after '.'") }
            while digit(pos) { pos += 1 }
        }
        if pos < s.count && (s[pos] == "e" || s[pos] == "E") {
            integral = false
            pos += 1
            if pos < s.count && (s[pos] == "+" || s[pos] == "-") { pos += 1 }
            guard digit(pos) else { throw fail("expected a digit in the exponent") }
            while digit(pos) { pos += 1 }
        }
        let text = String(String.UnicodeScalarView(s[start..<pos]))
        if integral, let v = Int64(text) { return v }
        guard let d = Double(text), d.isFinite else { throw fail("number \(text) is out of range") }
        return d
    }
}

/// A JSON object plus its path, for messages that name the field.
public struct JSONObject {
    public let map: [String: Any]
    public let path: String

    public static func parse(_ text: String, _ path: String) throws -> JSONObject {
        guard let m = try parseJSON(text) as? [String: Any] else { throw GlassfinderError.bundle("\(path): expected a JSON object at the top level") }
        return JSONObject(map: m, path: path)
    }

    public func has(_ key: String) -> Bool { map[key] != nil && !(map[key] is NSNull) }

    func raw(_ key: String) throws -> Any {
        guard let v = map[key] else { throw GlassfinderError.bundle("\(path).\(key): missing field") }
        return v
    }

    public func obj(_ key: String) throws -> JSONObject {
        guard let m = try raw(key) as? [String: Any] else { throw GlassfinderError.bundle("\(path).\(key): expected an object") }
        return JSONObject(map: m, path: "\(path).\(key)")
    }

    public func objOrNil(_ key: String) throws -> JSONObject? { try has(key) ? obj(key) : nil }

    public func list(_ key: String) throws -> [Any] {
        guard let l = try raw(key) as? [Any] else { throw GlassfinderError.bundle("\(path).\(key): expected a list") }
        return l
    }

    public func objects(_ key: String) throws -> [JSONObject] {
        try list(key).enumerated().map { i, v in
            guard let m = v as? [String: Any] else { throw GlassfinderError.bundle("\(path).\(key)[\(i)]: expected an object") }
            return JSONObject(map: m, path: "\(path).\(key)[\(i)]")
        }
    }

    public func string(_ key: String) throws -> String {
        guard let v = try raw(key) as? String else { throw GlassfinderError.bundle("\(path).\(key): expected a string") }
        return v
    }

    public func bool(_ key: String) throws -> Bool {
        guard let v = try raw(key) as? Bool else { throw GlassfinderError.bundle("\(path).\(key): expected true or false") }
        return v
    }

    public func int64(_ key: String) throws -> Int64 {
        guard let v = try raw(key) as? Int64 else { throw GlassfinderError.bundle("\(path).\(key): expected an integer") }
        return v
    }

    public func int(_ key: String) throws -> Int { Int(try int64(key)) }

    public func double(_ key: String) throws -> Double { try JSONObject.asDouble(try raw(key), "\(path).\(key)") }

    public func doubles(_ key: String) throws -> [Double] {
        try list(key).enumerated().map { i, v in try JSONObject.asDouble(v, "\(path).\(key)[\(i)]") }
    }

    public func ints(_ key: String) throws -> [Int] {
        try list(key).enumerated().map { i, v in
            guard let n = v as? Int64 else { throw GlassfinderError.bundle("\(path).\(key)[\(i)]: expected an integer") }
            return Int(n)
        }
    }

    public func strings(_ key: String) throws -> [String] {
        try list(key).enumerated().map { i, v in
            guard let s = v as? String else { throw GlassfinderError.bundle("\(path).\(key)[\(i)]: expected a string") }
            return s
        }
    }

    public static func asDouble(_ v: Any, _ path: String) throws -> Double {
        if let i = v as? Int64 { return Double(i) }
        if let d = v as? Double { return d }
        throw GlassfinderError.bundle("\(path): expected a number")
    }
}

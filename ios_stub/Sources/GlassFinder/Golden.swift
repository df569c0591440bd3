// Reader of golden.txt (format in runtime/golden.py): blocks "<name> <dtype> <ndim> <dims...>"
// then row-major values (f32, f64, i64), or "str" blocks whose next line is the text.
import Foundation

public struct GoldenBlock {
    public let name: String, dtype: String, shape: [Int]
    let values: [Substring]
    public let text: String?

    /// f32 values are parsed as Float first: exactly the float32 the runtime wrote.
    public func doubles() -> [Double] { dtype == "f32" ? values.map { Double(Float(String($0))!) } : values.map { Double(String($0))! } }
    public func floats() -> [Float] { values.map { Float(String($0))! } }
    public func int64s() -> [Int64] { values.map { Int64(String($0))! } }
    public func ints() -> [Int] { values.map { Int(String($0))! } }
    public func bytes() -> [UInt8] { values.map { UInt8(String($0))! } }
}

/// Names of the blocks read so far (a reference, so reading through a `let` Golden records them):
/// a check can tell which stored stages it never compared.
public final class GoldenUsage { public internal(set) var names = Set<String>() }

public struct Golden {
    public let blocks: [String: GoldenBlock]
    public let used = GoldenUsage()

    public subscript(name: String) -> GoldenBlock {
        get throws {
            used.names.insert(name)
            guard let b = blocks[name] else { throw GlassfinderError.bundle("golden vectors: no block named '\(name)' (regenerate with glassfinder_runtime.golden)") }
            return b
        }
    }

    public func text(_ name: String) throws -> String {
        guard let t = try self[name].text else { throw GlassfinderError.bundle("golden block '\(name)' is not a string") }
        return t
    }

    public static func parse(_ content: String) throws -> Golden {
        let lines = content.split(separator: "\n", omittingEmptySubsequences: false)
        var blocks: [String: GoldenBlock] = [:]
        var i = 0
        while i < lines.count {
            let line = lines[i]
            i += 1
            if line.isEmpty || line.hasPrefix("#") { continue }
            let head = line.split(separator: " ").map(String.init)
            guard head.count >= 3, let ndim = Int(head[2]), head.count == 3 + ndim else { throw GlassfinderError.bundle("golden.txt line \(i): bad block header") }
            let shape = head[3...].map { Int($0)! }
            if head[1] == "str" {
                blocks[head[0]] = GoldenBlock(name: head[0], dtype: "str", shape: shape, values: [], text: String(lines[i]))
                i += 1
                continue
            }
            let count = shape.reduce(1, *)
            var values: [Substring] = []
            while values.count < count {
                guard i < lines.count else { throw GlassfinderError.bundle("golden.txt: block \(head[0]) is truncated") }
                values += lines[i].split(separator: " ")
                i += 1
            }
            blocks[head[0]] = GoldenBlock(name: head[0], dtype: head[1], shape: shape, values: values, text: nil)
        }
        return Golden(blocks: blocks)
    }
}

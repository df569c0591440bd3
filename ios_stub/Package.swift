// swift-tools-version:5.7
// glassfinder iOS stub: the runtime's on-device pipeline over Core ML, checked against the golden
// vectors that runtime/golden.py writes (tests/fixtures/golden/golden.txt).
//
// NOT compiled or run in this repository's CI (no Swift toolchain on its Linux machines):
// run `swift test` in this folder on a Mac (or on Linux with Swift: the Core ML / Vision parts are
// behind `#if canImport(CoreML)`, the numeric core and the golden tests build anywhere).
import PackageDescription

let package = Package(
    name: "GlassFinder",
    platforms: [.iOS(.v16), .macOS(.v13)],
    products: [.library(name: "GlassFinder", targets: ["GlassFinder"])],
    targets: [
        .target(name: "GlassFinder", path: "Sources/GlassFinder"),
        .testTarget(name: "GlassFinderTests", dependencies: ["GlassFinder"], path: "Tests/GlassFinderTests"),
    ]
)

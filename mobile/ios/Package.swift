// swift-tools-version:5.9
// Attune for iOS: the generated Swift binding over Attune.xcframework (the
// static library per platform, made by ./build-xcframework).
import PackageDescription

let package = Package(
    name: "Attune",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "Attune", targets: ["Attune"]),
    ],
    targets: [
        .binaryTarget(name: "AttuneFFI", path: "Attune.xcframework"),
        .target(
            name: "Attune",
            dependencies: ["AttuneFFI"],
            path: "Sources/Attune"
        ),
        .testTarget(
            name: "AttuneTests",
            dependencies: ["Attune"],
            path: "Tests/AttuneTests",
            resources: [
                .copy("Resources/tiny-model"),
                .copy("Resources/default-model"),
                .copy("Resources/scenario.json"),
            ]
        ),
    ]
)

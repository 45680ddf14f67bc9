// swift-tools-version:6.1
import PackageDescription

// Module layout (dependencies point one way, top to bottom):
//
//   CBLAS            system library: OpenBLAS's cblas.h
//   CQ8              C: the int8 dot products of 8-bit weights, SIMD level chosen at run time
//   PolicyEngine     numerics + model: safetensors, tokenizer, chat templates, transformer
//                    forward/backward, KV cache, sampling.            (no HTTP, no SQL)
//   PromptR1         the Prompt-R1 protocol: prompt rendering, call parsing, turn loop, reward.
//                    Written against small protocols; one adapter file binds it to PolicyEngine.
//   OpenAIWire       OpenAI Codable types, SSE encode/decode, errors, upstream HTTP client.
//   TrafficLog       SQLite (GRDB) schema, migrations, batched writer, readers.
//   GatewayServer    Hummingbird routes, auth, admin, metrics, config.
//   EpisodeLog       between the protocol and the log: Episode -> EpisodeRecord rows, and a
//                    checkpoint's weights digest (version id). Used by server and trainer.
//   GatewayTrainer   (issue 6) rollouts, training rewards, GRPO advantages, PPO/KL loss, the
//                    training loop over PolicyEngine's TrainableModel/AdamW (LoRA or full),
//                    checkpoints + manifest, export for verl/TRL, eval. Never imports
//                    GatewayServer (it has its own small upstream adapter).
//   gateway, gateway-train, gateway-bench: thin executables.
let package = Package(
    name: "PromptR1Gateway",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "gateway", targets: ["gateway"]),
        .executable(name: "gateway-train", targets: ["gateway-train"]),
        .executable(name: "gateway-bench", targets: ["gateway-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.0"..<"5.0.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.25.0"),
        // OpenTelemetry traces over OTLP/HTTP only: the gRPC exporter trait would pull in grpc-swift.
        .package(url: "https://github.com/swift-otel/swift-otel.git", from: "1.6.0", traits: ["OTLPHTTP"]),
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.7.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CBLAS", path: "Sources/CBLAS", pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"])]),
        // 8-bit dot products (AVX2 / AVX-512 VNNI picked at run time); CBLAS has no integer products.
        .target(name: "CQ8", cSettings: [.unsafeFlags(["-O2"])]),
        .target(
            name: "PolicyEngine",
            dependencies: ["CBLAS", "CQ8"],
            // The numerics are optimised in debug builds too: tests run real models, and an
            // unoptimised forward pass is ~30x slower. Release adds -Ounchecked.
            swiftSettings: [
                .unsafeFlags(["-O"], .when(configuration: .debug)),
                .unsafeFlags(["-Ounchecked"], .when(configuration: .release)),
            ]
        ),
        .target(name: "PromptR1", dependencies: ["PolicyEngine"]),
        .target(
            name: "OpenAIWire",
            dependencies: [
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "TrafficLog",
            dependencies: [
                "PromptR1",  // PolicyLogprobKind, stored on each episode
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The PostgreSQL log backend (several replicas on one shared log) and the opener that picks
        // a backend from a location (SQLite path or postgres:// URL). Kept apart so that
        // TrafficLog and its tests stay SQLite-only.
        .target(
            name: "TrafficLogPostgres",
            dependencies: [
                "TrafficLog", "PromptR1",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .target(
            name: "EpisodeLog",
            dependencies: ["PolicyEngine", "PromptR1", "TrafficLog", "OpenAIWire", .product(name: "Crypto", package: "swift-crypto")]
        ),
        // The policy on an inference engine (vLLM, SGLang, llama.cpp server): one adapter per
        // engine's documented token-id interface, behind PromptR1's PolicySession.
        .target(
            name: "RemotePolicy",
            dependencies: [
                "PromptR1", "PolicyEngine", "EpisodeLog", "OpenAIWire",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
            ]
        ),
        .target(
            name: "GatewayServer",
            dependencies: [
                "OpenAIWire", "TrafficLog", "TrafficLogPostgres", "PromptR1", "PolicyEngine", "EpisodeLog", "RemotePolicy",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "OTel", package: "swift-otel"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ]
        ),
        // A scriptable OpenAI-compatible upstream on loopback, for tests and benchmarks.
        .target(
            name: "FakeUpstream",
            dependencies: [
                "OpenAIWire",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ]
        ),
        .executableTarget(
            name: "gateway",
            dependencies: ["GatewayServer", "TrafficLog", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .target(
            name: "GatewayTrainer",
            dependencies: [
                "PolicyEngine", "PromptR1", "OpenAIWire", "TrafficLog", "EpisodeLog",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "gateway-train",
            dependencies: [
                "GatewayTrainer", "EpisodeLog", "PolicyEngine", "PromptR1", "TrafficLog", "TrafficLogPostgres",
                // `experiment` serves its scripted upstream on loopback.
                "FakeUpstream", "OpenAIWire",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "gateway-bench",
            dependencies: [
                "GatewayServer", "PolicyEngine", "PromptR1", "OpenAIWire", "FakeUpstream", "TrafficLog", "TrafficLogPostgres",
                "RemotePolicy",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: [.unsafeFlags(["-Ounchecked"], .when(configuration: .release))]
        ),
        .testTarget(name: "PolicyEngineTests", dependencies: ["PolicyEngine"]),
        .testTarget(name: "PromptR1Tests", dependencies: ["PromptR1", "PolicyEngine"]),
        .testTarget(name: "OpenAIWireTests", dependencies: ["OpenAIWire"]),
        // The adapters against recorded engine exchanges, and the llama.cpp backend against a real
        // llama-server (scripts/build-llama-server.sh) compared with the embedded engine.
        .testTarget(name: "RemotePolicyTests", dependencies: ["RemotePolicy", "PromptR1", "PolicyEngine", "FakeUpstream"]),
        .testTarget(name: "TrafficLogTests", dependencies: ["TrafficLog", "PromptR1", .product(name: "GRDB", package: "GRDB.swift")]),
        // The PostgreSQL backend against a real server (scripts/with-postgres.sh starts one). The
        // replica tests (several gateway processes on one log) are in GatewayServerTests.
        .testTarget(
            name: "TrafficLogPostgresTests",
            dependencies: ["TrafficLog", "TrafficLogPostgres", "PromptR1", .product(name: "Logging", package: "swift-log")]),
        .testTarget(
            name: "GatewayServerTests",
            dependencies: [
                "GatewayServer", "OpenAIWire", "TrafficLog", "TrafficLogPostgres", "FakeUpstream", "PromptR1", "PolicyEngine",
                "EpisodeLog", "GatewayTrainer", "RemotePolicy",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ]
        ),
        // The trainer's math, selection, export and rollout against a real SQLite file and a
        // FakeUpstream, the learning test, and the built gateway-train executable.
        .testTarget(
            name: "GatewayTrainerTests",
            dependencies: [
                "GatewayTrainer", "EpisodeLog", "PolicyEngine", "PromptR1", "TrafficLog", "TrafficLogPostgres", "OpenAIWire",
                "FakeUpstream",
            ]),
    ]
)

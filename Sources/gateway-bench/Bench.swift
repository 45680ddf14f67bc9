import ArgumentParser

/// `gateway-bench`: speed measurements, each printed beside a baseline measured in the same run.
@main
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway-bench",
        abstract: "Benchmarks for the gateway (run a release build: swift run -c release gateway-bench ...).",
        subcommands: [
            ProxyBench.self, CollabBench.self, EngineBench.self, TrainBench.self, SoakBench.self, ConsoleBench.self, LogWriterBench.self,
            SpeculationBench.self,
            FakeUpstreamCommand.self, NullProxyCommand.self,
        ]
    )
}

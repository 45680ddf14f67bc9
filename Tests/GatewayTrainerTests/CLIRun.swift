import Foundation
import XCTest

/// Runs the built gateway-train executable; stderr goes to a file so a full pipe never blocks it.
enum TrainCLI {
    struct Run {
        var status: Int32
        var out: String
        var err: String
    }

    static func run(_ args: [String]) throws -> Run {
        let p = Process()
        p.executableURL = try CLITests.executable()
        p.arguments = args
        let errURL = FileManager.default.temporaryDirectory.appendingPathComponent("gateway-train-err-\(UUID().uuidString)")
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: errURL) }
        let out = Pipe()
        let errHandle = try FileHandle(forWritingTo: errURL)
        p.standardOutput = out
        p.standardError = errHandle
        try p.run()
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        try errHandle.close()
        let errData = try Data(contentsOf: errURL)
        return Run(
            status: p.terminationStatus, out: String(decoding: outData, as: UTF8.self), err: String(decoding: errData, as: UTF8.self))
    }
}

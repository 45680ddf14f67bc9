import Foundation

/// What a Python comparison script printed: `key=value` lines (numbers in `values`, the rest in
/// `text`), or `skip=<reason>` when a module it needs is missing.
struct PythonResult {
    var ok: Bool
    var values: [String: Double] = [:]
    var text: [String: String] = [:]
    var error = ""
}

enum PythonRunner {
    /// Writes `script` into `work` and runs it with `python` and `args`. Its stderr goes to a file
    /// (a pipe nobody reads could fill up and stall a chatty script); its last line explains a failure.
    static func run(python: String, script: String, name: String, args: [String], work: URL) -> PythonResult {
        let file = work.appendingPathComponent(name)
        do { try script.write(to: file, atomically: true, encoding: .utf8) } catch {
            return PythonResult(ok: false, error: "cannot write the script: \(error)")
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = [python, file.path] + args
        let out = Pipe()
        let errFile = work.appendingPathComponent(name + ".stderr")
        FileManager.default.createFile(atPath: errFile.path, contents: nil)
        p.standardOutput = out
        p.standardError = try? FileHandle(forWritingTo: errFile)
        do { try p.run() } catch { return PythonResult(ok: false, error: "cannot run \(python): \(error)") }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        var r = PythonResult(ok: p.terminationStatus == 0)
        for line in String(decoding: outData, as: UTF8.self).split(separator: "\n") {
            let kv = line.split(separator: "=", maxSplits: 1).map(String.init)
            guard kv.count == 2 else { continue }
            if let v = Double(kv[1]) { r.values[kv[0]] = v } else { r.text[kv[0]] = kv[1] }
        }
        if let skip = r.text["skip"] {
            r.ok = false
            r.error = skip
        }
        if p.terminationStatus != 0 {
            let errData = (try? Data(contentsOf: errFile)) ?? Data()
            let lastLine = String(decoding: errData, as: UTF8.self).split(separator: "\n").last.map(String.init) ?? ""
            r.error = "\(python) exited \(p.terminationStatus): \(lastLine)"
        }
        return r
    }
}

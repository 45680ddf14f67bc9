import ArgumentParser
import CBLAS
import Foundation
import PolicyEngine

/// Speed and memory of the embedded engine on a Qwen2.5-0.5B-shaped model, every figure printed beside a
/// baseline measured in the same run (or the issue's target):
///
/// - the sgemv memory bandwidth over a matrix far larger than the caches; with the weight bytes one decode
///   token reads, it gives the bandwidth-limited decode speed that single-sequence decode is held against;
/// - prefill tok/s (128- and 512-token prompts), single-sequence decode tok/s, and the aggregate decode rate
///   of 1, 4 and 16 sequences through the continuous-batching `BatchScheduler`;
/// - resident memory (VmRSS / VmHWM) against the weight bytes plus the KV caches alive at the time;
/// - tokenizer encode MB/s on ~1 MB of mixed text, beside Hugging Face `tokenizers` when Python has it;
/// - optionally the same model's prefill/decode in PyTorch (subprocess), with greedy agreement.
struct EngineBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "engine",
        abstract: "Engine prefill/decode/batching speed, memory and tokenizer speed against same-run baselines.")

    @OptionGroup var weights: BenchModelOptions
    @Option(help: "OpenBLAS threads.") var threads = 2
    @Option(help: "Minimum measuring time per figure, seconds.") var seconds: Double = 4
    @Option(name: .customLong("python"), help: "Python for the optional PyTorch / HF tokenizers comparisons.") var python = "python3"
    @Flag(name: .customLong("no-python"), help: "Skip the PyTorch and HF tokenizers comparisons.") var noPython = false
    @Flag(help: "Also load the model with 8-bit weights (WeightFormat.q8): speed, and accuracy against F32.") var q8 = false
    @Option(
        help: """
            Model shape when --model is not given: qwen2.5-0.5b (F32, every figure), or qwen3-4b (the paper's \
            published policy: random BF16 weights, 8 GB, written once; needs --q8, loaded in 8 bits only).
            """) var shape: BenchShape = .qwen05

    enum BenchShape: String, ExpressibleByArgument, CaseIterable {
        case qwen05 = "qwen2.5-0.5b"
        case qwen34b = "qwen3-4b"
    }

    func validate() throws {
        if shape == .qwen34b && !q8 {
            throw ValidationError(
                "--shape qwen3-4b runs with --q8 only: its float32 weights (16 GB) do not fit beside the OS on this class of machine")
        }
        if shape == .qwen34b && weights.model != nil { throw ValidationError("--shape and --model are exclusive") }
    }

    func run() async throws {
        BLASThreads.set(threads)
        if shape == .qwen34b { return try await runQwen3_4B() }
        let core = BLASCore.selectOptimizedCore() ?? "?"
        let load0 = loadAverage()
        var table = ResultTable()

        // 1. Bandwidth baseline, before the model is mapped so its buffer never adds to the peak RSS.
        let bwRows = 151_936
        let bwCols = 896
        let bw = sgemvBandwidth(rows: bwRows, cols: bwCols, seconds: max(1, seconds / 2))
        let rssBase = ProcStatus.bytes("VmRSS") ?? 0

        // 2. Model.
        let dir = try weights.folder()
        let (m, loadSeconds) = try Stopwatch.measure { try TransformerModel.load(from: dir) }
        let c = m.config
        let weightFileBytes = m.parameterCount * 4
        let rssAfterLoad = ProcStatus.bytes("VmRSS") ?? 0
        print("engine bench: \(dir.path)")
        print(
            "  \(c.modelType.rawValue) hidden \(c.hiddenSize), \(c.numHiddenLayers) layers, \(c.numAttentionHeads)/\(c.numKeyValueHeads) heads, "
                + "FFN \(c.intermediateSize), vocab \(c.vocabSize), tied \(c.tieWordEmbeddings); \(m.parameterCount) parameters "
                + "(\(gb(weightFileBytes)) GB F32), loaded in \(f2(loadSeconds)) s, RSS after load \(mb(rssAfterLoad)) MB")
        print(
            "  OpenBLAS core \(core), \(threads) threads; \(ProcessInfo.processInfo.activeProcessorCount) CPUs; load average at start \(load0)"
        )

        var kvPeak = 0
        // Warm-up: pages the weights in and sizes the workspace for 512-row chunks.
        do {
            let cache = m.makeCache(initialCapacity: 512)
            _ = try m.prefill(tokens: randomTokens(512, seed: 99), cache: cache)
            kvPeak = max(kvPeak, cache.allocatedBytes)
        }

        // 3. Prefill.
        var prefill: [Int: Double] = [:]
        for len in [128, 512] {
            var times: [Double] = []
            let clock = Stopwatch()
            var run = 0
            while times.count < 2 || clock.seconds < seconds / 2 {
                let cache = m.makeCache(initialCapacity: len)
                let toks = randomTokens(len, seed: UInt64(1000 + run))
                let (_, t) = try Stopwatch.measure { try m.prefill(tokens: toks, cache: cache) }
                kvPeak = max(kvPeak, cache.allocatedBytes)
                times.append(t)
                run += 1
            }
            prefill[len] = Double(len) / median(times)
        }

        // 4. Single-sequence decode (direct `decode` calls, greedy), per-token times.
        let promptLen = 64
        let prompt = randomTokens(promptLen, seed: 7)
        var decodeCache: KVCache? = m.makeCache(initialCapacity: promptLen + 1024)
        var logits = try m.prefill(tokens: prompt, cache: decodeCache!)
        var stepTimes: [Double] = []
        var greedy: [Int32] = []
        let decodeClock = Stopwatch()
        while stepTimes.count < 16 || (decodeClock.seconds < seconds && stepTimes.count < 1000) {
            let next = Int32(Sampler.argmax(logits))
            greedy.append(next)
            let (l, t) = try Stopwatch.measure { try m.decode([(token: next, cache: decodeCache!)])[0] }
            logits = l
            stepTimes.append(t)
        }
        kvPeak = max(kvPeak, decodeCache!.allocatedBytes)
        decodeCache = nil  // the scheduler runs below count their own caches
        let decodeMedian = 1 / median(stepTimes)
        let decodeMean = Double(stepTimes.count) / stepTimes.reduce(0, +)
        let meanContext = promptLen + stepTimes.count / 2
        let layerMatrix =
            c.qDim * c.hiddenSize + 2 * c.kvDim * c.hiddenSize + c.hiddenSize * c.qDim
            + 3 * c.hiddenSize * c.intermediateSize
        let traits = c.traits
        let layerSmall =
            2 * c.hiddenSize + (traits.qkvBias ? c.qDim + 2 * c.kvDim : 0) + (traits.qkNorm ? 2 * c.headDim : 0)
            + (traits.outputBias ? c.hiddenSize : 0)
        // Every layer matrix and vector, the lm_head (the embedding when tied), the final norm and one embedding row.
        let weightBytesPerToken = 4 * (c.numHiddenLayers * (layerMatrix + layerSmall) + c.vocabSize * c.hiddenSize + 2 * c.hiddenSize)
        let kvBytesPerToken = 4 * 2 * c.numHiddenLayers * c.kvDim * meanContext
        let limit = bw.gbps * 1e9 / Double(weightBytesPerToken + kvBytesPerToken)

        // 5. Continuous batching through the scheduler.
        var sched: [Int: SchedulerRun] = [:]
        for n in [1, 4, 16] {
            let expectedStepRate = decodeMean * [1: 1.0, 4: 0.8, 16: 0.4][n]!
            let maxTokens = max(16, Int(seconds * expectedStepRate))
            let r = await schedulerRun(m, sequences: n, promptLen: promptLen, maxTokens: maxTokens)
            kvPeak = max(kvPeak, r.kvBytes)
            sched[n] = r
        }
        let rssEnd = ProcStatus.bytes("VmRSS") ?? 0
        let hwm = ProcStatus.bytes("VmHWM") ?? 0

        // 6. Tokenizer.
        let tokDir = URL(fileURLWithPath: weights.tokenizerFrom)
        let tokenizer = try Tokenizer(directory: tokDir)
        let text = MixedText.make(bytes: 1 << 20, seed: 11)
        let textBytes = text.utf8.count
        var ids: [Int32] = []
        var encTimes: [Double] = []
        let tokClock = Stopwatch()
        while encTimes.count < 3 || tokClock.seconds < seconds / 2 {
            let (r, t) = Stopwatch.measure { tokenizer.encode(text) }
            ids = r
            encTimes.append(t)
        }
        let encodeMBs = Double(textBytes) / 1e6 / median(encTimes)
        let roundTrip = tokenizer.decode(ids) == text

        // 7. 8-bit weights.
        let q8Result = q8 ? try await measureQ8(dir: dir, f32: m, prompt: prompt, bandwidth: bw.gbps) : nil

        // 8. Optional Python comparisons (after everything else, so they do not disturb the measurements).
        var hf: PythonResult?
        var torch: PythonResult?
        if !noPython {
            let work = FileManager.default.temporaryDirectory.appendingPathComponent("engine-bench-\(getpid())")
            try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: work) }
            let textFile = work.appendingPathComponent("text.txt")
            try Data(text.utf8).write(to: textFile)
            hf = runPython(
                PythonScripts.tokenizers,
                args: [
                    tokDir.appendingPathComponent("tokenizer.json").path, textFile.path,
                    work.appendingPathComponent("ids.json").path,
                ], work: work)
            if hf?.ok == true, let data = try? Data(contentsOf: work.appendingPathComponent("ids.json")),
                let theirs = try? JSONDecoder().decode([Int32].self, from: data)
            {
                hf?.values["same_ids"] = theirs == ids ? 1 : 0
                hf?.values["first_diff"] = Double(zip(theirs, ids).prefix { $0 == $1 }.count)
            }
            let greedyPrompt = prompt.map(String.init).joined(separator: ",")
            torch = runPython(
                PythonScripts.torchDecode,
                args: [
                    dir.path, "\(threads)", greedyPrompt, "\(min(greedy.count, 32))",
                    "\(max(16, Int(seconds * decodeMean)))",
                ], work: work)
            if torch?.ok == true, let theirs = torch?.text["greedy"] {
                let t = theirs.split(separator: ",").compactMap { Int32($0) }
                let agree = zip(t, greedy).prefix { $0 == $1 }.count
                torch?.values["agree"] = Double(agree)
                torch?.values["compared"] = Double(min(t.count, greedy.count))
            }
        }

        // Table.
        let fraction = decodeMedian / limit
        table.section("memory bandwidth baseline")
        table.row(
            "sgemv \(bwRows)x\(bwCols) F32 (\(mb(bwRows * bwCols * 4)) MB)", "\(f1(bw.gbps)) GB/s",
            "median of \(bw.runs); best \(f1(bw.best)) GB/s", "")
        table.row(
            "weight bytes read per decode token", "\(f3(Double(weightBytesPerToken) / 1e9)) GB",
            "+ KV \(f2(Double(kvBytesPerToken) / 1e6)) MB at \(meanContext) positions", "")
        table.row("bandwidth-limited decode", "\(f1(limit)) tok/s", "sgemv GB/s / bytes per token", "")
        table.section("single sequence")
        table.row("prefill 128-token prompt", "\(f1(prefill[128]!)) tok/s", "target >= 150", verdict(prefill[128]! >= 150))
        table.row("prefill 512-token prompt", "\(f1(prefill[512]!)) tok/s", "target >= 150", verdict(prefill[512]! >= 150))
        table.row(
            "decode x1 (median step)", "\(f2(decodeMedian)) tok/s",
            "\(pct(fraction)) of \(f1(limit)); target >= 90%", verdict(fraction >= 0.9))
        table.row(
            "decode x1 (mean, \(stepTimes.count) steps)", "\(f2(decodeMean)) tok/s",
            "\(f1(decodeMean * Double(weightBytesPerToken + kvBytesPerToken) / 1e9)) GB/s streamed", "")
        table.section("continuous batching (BatchScheduler, steady state)")
        let s1 = sched[1]!.rate
        for n in [1, 4, 16] {
            let r = sched[n]!
            let ratio = r.rate / s1
            table.row(
                "decode x\(n) aggregate (\(r.maxTokens) tok/seq)", "\(f2(r.rate)) tok/s",
                n == 1 ? "direct decode \(f2(decodeMean)) tok/s" : "\(f2(ratio))x scheduler x1" + (n == 16 ? "; target >= 6x" : ""),
                n == 16 ? verdict(ratio >= 6) : "")
        }
        table.section("memory")
        let budget = Double(weightFileBytes + kvPeak)
        table.row(
            "weights mapped in place", pct(m.mappedWeightFraction), "target 100% (F32 mapped, not copied)",
            verdict(m.mappedWeightFraction >= 0.999))
        table.row(
            "peak RSS (VmHWM)", "\(mb(hwm)) MB",
            "\(f2(Double(hwm) / budget))x of weights \(mb(weightFileBytes)) + KV \(mb(kvPeak)) MB; target <= 1.2x",
            verdict(Double(hwm) <= 1.2 * budget))
        table.row("RSS at end (VmRSS)", "\(mb(rssEnd)) MB", "before load \(mb(rssBase)) MB, after load \(mb(rssAfterLoad)) MB", "")
        table.section("tokenizer (\(tokDir.lastPathComponent), \(f2(Double(textBytes) / 1e6)) MB mixed text)")
        table.row(
            "encode", "\(f2(encodeMBs)) MB/s",
            "\(ids.count) tokens, \(f0(Double(ids.count) / median(encTimes) / 1000))k tok/s; round trip \(roundTrip ? "exact" : "DIFFERS")",
            verdict(roundTrip))
        if let hf {
            if hf.ok, let theirs = hf.values["mbps"] {
                let same = hf.values["same_ids"] == 1
                table.row(
                    "HF tokenizers \(hf.text["version"] ?? "") (Rust), one string", "\(f2(theirs)) MB/s",
                    "ours \(f2(encodeMBs / theirs))x; ids "
                        + (same ? "identical" : "differ from token \(Int(hf.values["first_diff"] ?? 0))"),
                    verdict(same))
                if let pieces = hf.values["mbps_pieces"] {
                    table.row(
                        "HF tokenizers, \(Int(hf.values["pieces"] ?? 0)) paragraph calls", "\(f2(pieces)) MB/s",
                        "ours \(f2(encodeMBs / pieces))x", "")
                }
            } else {
                table.row("HF tokenizers", "n/a", hf.error, "")
            }
        }
        if let q = q8Result {
            table.section("8-bit weights (--q8: int8 projections + lm_head, per-block scales)")
            table.row("quantised at load", "\(mb(q.bytes)) MB", "in \(f2(q.loadSeconds)) s; F32 \(mb(weightFileBytes)) MB", "")
            table.row("int8 dot-product kernel", "\(Q8KernelLevel.current)", "best this CPU runs: \(Q8KernelLevel.best)", "")
            table.row("RSS added by the 8-bit model", "\(mb(q.rssAdded)) MB", "after load + a 512-token prefill", "")
            table.row(
                "prefill 128-token prompt (int8 GEMM)", "\(f1(q.prefill128)) tok/s",
                "F32 \(f1(prefill[128]!)) (\(f2(q.prefill128 / prefill[128]!))x)", "")
            table.row(
                "prefill 512-token prompt (int8 GEMM)", "\(f1(q.prefill512)) tok/s",
                "F32 \(f1(prefill[512]!)) (\(f2(q.prefill512 / prefill[512]!))x); target >= 330", verdict(q.prefill512 >= 330))
            table.row("  time by section", "", q.profile, "")
            table.row(
                "decode x1 (median step)", "\(f2(q.decodeMedian)) tok/s",
                "target >= 40; F32 \(f2(decodeMedian)); int8 bandwidth limit \(f1(q.limit))", verdict(q.decodeMedian >= 40))
            table.row(
                "decode x16 aggregate (scheduler)", "\(f2(q.x16)) tok/s",
                "F32 \(f2(sched[16]!.rate)) (\(f2(q.x16 / sched[16]!.rate))x); target >= 2x", verdict(q.x16 >= 2 * sched[16]!.rate))
            table.row(
                "max |logit error| vs F32 (\(q.steps + 1) positions)", f3(q.maxError),
                "F32 logits span \(f1(q.span)); mean |error| \(f3(q.meanError))", "")
            table.row("greedy agreement, teacher-forced", "\(q.agree)/\(q.steps + 1)", "argmax equal at each position", "")
            table.row("greedy agreement, free-running", "\(q.prefix)/\(q.steps)", "tokens equal before the first difference", "")
        }
        if let torch {
            if torch.ok, let dec = torch.values["decode_tps"], let pre = torch.values["prefill128_tps"] {
                table.section("PyTorch \(torch.text["version"] ?? "") on the same checkpoint (\(threads) threads, F32)")
                table.row("prefill 128-token prompt", "\(f1(pre)) tok/s", "ours \(f2(prefill[128]! / pre))x", "")
                table.row("decode x1", "\(f2(dec)) tok/s", "ours \(f2(decodeMean / dec))x (mean vs mean)", "")
                table.row(
                    "greedy agreement from the same prompt", "\(Int(torch.values["agree"] ?? 0))/\(Int(torch.values["compared"] ?? 0))",
                    "tokens equal before the first difference", "")
            } else {
                table.section("PyTorch")
                table.row("PyTorch comparison", "n/a", torch.error, "")
            }
        }
        print("")
        table.print()
        print("")
        print(
            "load average at end \(loadAverage()) (other processes on these \(ProcessInfo.processInfo.activeProcessorCount) CPUs lower every figure)"
        )
    }

    // MARK: measurements

    struct Q8Result {
        var profile: String
        var bytes: Int, rssAdded: Int, loadSeconds: Double, prefill128: Double, prefill512: Double, decodeMedian: Double, limit: Double
        var x16: Double, maxError: Double, meanError: Double, span: Double, agree: Int, prefix: Int, steps: Int
    }

    /// The same checkpoint with 8-bit weights: speed, and logits/greedy tokens against the float32 model.
    private func measureQ8(dir: URL, f32: TransformerModel, prompt: [Int32], bandwidth: Double) async throws -> Q8Result {
        let rss0 = ProcStatus.bytes("VmRSS") ?? 0
        let (m, loadSeconds) = try Stopwatch.measure { try TransformerModel.load(from: dir, weightFormat: .q8) }
        _ = try m.prefill(tokens: randomTokens(512, seed: 99), cache: m.makeCache(initialCapacity: 512))
        let rssAdded = (ProcStatus.bytes("VmRSS") ?? 0) - rss0
        var pre: [Int: Double] = [:]
        for len in [128, 512] {
            var times: [Double] = []
            let clock = Stopwatch()
            while times.count < 2 || clock.seconds < seconds / 2 {
                let toks = randomTokens(len, seed: UInt64(1000 + times.count))
                let cache = m.makeCache(initialCapacity: len)
                times.append(try Stopwatch.measure { try m.prefill(tokens: toks, cache: cache) }.1)
            }
            pre[len] = Double(len) / median(times)
        }
        // Where a 512-token 8-bit prefill spends its time (the engine's section profiler, one more run).
        m.profiler.reset()
        m.profiler.enabled = true
        _ = try m.prefill(tokens: randomTokens(512, seed: 4242), cache: m.makeCache(initialCapacity: 512))
        m.profiler.enabled = false
        let profile = m.profiler.report
        // Accuracy: both models fed the F32 greedy continuation (teacher forcing), logits compared at each position.
        let steps = 64
        let cf = f32.makeCache(initialCapacity: prompt.count + steps + 1)
        let cq = m.makeCache(initialCapacity: prompt.count + steps + 1)
        var lf = try f32.prefill(tokens: prompt, cache: cf)
        var lq = try m.prefill(tokens: prompt, cache: cq)
        var maxErr: Float = 0
        var sumErr: Double = 0
        var span: Float = 0
        var agree = 0
        var f32Greedy: [Int32] = []
        var stepTimes: [Double] = []
        for step in 0...steps {
            for j in 0..<lf.count {
                let e = abs(lf[j] - lq[j])
                maxErr = max(maxErr, e)
                sumErr += Double(e)
            }
            span = max(span, lf.max()! - lf.min()!)
            let next = Int32(Sampler.argmax(lf))
            if Int32(Sampler.argmax(lq)) == next { agree += 1 }
            if step == steps { break }
            f32Greedy.append(next)
            lf = try f32.decode([(token: next, cache: cf)])[0]
            let (l, t) = try Stopwatch.measure { try m.decode([(token: next, cache: cq)])[0] }
            lq = l
            stepTimes.append(t)
        }
        // Free-running 8-bit greedy decode from the same prompt.
        let cq2 = m.makeCache(initialCapacity: prompt.count + steps)
        var l2 = try m.prefill(tokens: prompt, cache: cq2)
        var prefix = 0
        var diverged = false
        for step in 0..<steps {
            let next = Int32(Sampler.argmax(l2))
            if !diverged && next == f32Greedy[step] { prefix += 1 } else { diverged = true }
            if diverged { break }
            let (l, t) = try Stopwatch.measure { try m.decode([(token: next, cache: cq2)])[0] }
            l2 = l
            stepTimes.append(t)
        }
        let decodeMedian = 1 / median(stepTimes)
        let x16 = await schedulerRun(
            m, sequences: 16, promptLen: prompt.count,
            maxTokens: max(16, Int(seconds * decodeMedian * 0.4))
        ).rate
        let bytesPerToken = m.quantizedWeightBytes
        return Q8Result(
            profile: profile, bytes: m.quantizedWeightBytes, rssAdded: rssAdded, loadSeconds: loadSeconds, prefill128: pre[128]!,
            prefill512: pre[512]!,
            decodeMedian: decodeMedian, limit: bandwidth * 1e9 / Double(bytesPerToken), x16: x16,
            maxError: Double(maxErr), meanError: sumErr / Double((steps + 1) * lf.count), span: Double(span),
            agree: agree, prefix: prefix, steps: steps)
    }

    /// cblas_sgemv over a rows x cols matrix: bytes of the matrix / time, median and best.
    private func sgemvBandwidth(rows: Int, cols: Int, seconds: Double) -> (gbps: Double, best: Double, runs: Int) {
        let a = UnsafeMutablePointer<Float>.allocate(capacity: rows * cols)
        let x = UnsafeMutablePointer<Float>.allocate(capacity: cols)
        let y = UnsafeMutablePointer<Float>.allocate(capacity: rows)
        defer {
            a.deallocate()
            x.deallocate()
            y.deallocate()
        }
        for i in 0..<(rows * cols) { a[i] = Float(i % 13) * 0.01 }
        for i in 0..<cols { x[i] = 1 }
        func once() -> Double {
            Stopwatch.measure {
                cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(rows), Int32(cols), 1, a, Int32(cols), x, 1, 0, y, 1)
            }.1
        }
        _ = once()
        var times: [Double] = []
        let clock = Stopwatch()
        while times.count < 5 || clock.seconds < seconds { times.append(once()) }
        let bytes = Double(rows * cols * 4)
        return (bytes / median(times) / 1e9, bytes / times.min()! / 1e9, times.count)
    }

    struct SchedulerRun {
        var rate: Double, kvBytes: Int, maxTokens: Int
    }

    /// `sequences` greedy generations submitted together; the rate counts tokens between the moment every
    /// sequence has its first token and the moment the first one finishes.
    private func schedulerRun(_ m: TransformerModel, sequences n: Int, promptLen: Int, maxTokens: Int) async -> SchedulerRun {
        let scheduler = BatchScheduler(model: m)
        defer { scheduler.shutdown() }
        let clock = Stopwatch()
        let handles = (0..<n).map {
            scheduler.submit(GenerationRequest(prompt: randomTokens(promptLen, seed: UInt64(500 + $0)), maxTokens: maxTokens))
        }
        let stamps = await withTaskGroup(of: [Double].self) { group in
            for h in handles {
                group.addTask {
                    var s: [Double] = []
                    for await e in h.events { if case .token = e { s.append(clock.seconds) } }
                    return s
                }
            }
            var all: [[Double]] = []
            for await s in group { all.append(s) }
            return all
        }
        let kv = handles.reduce(0) { $0 + $1.cache.allocatedBytes }
        let nonEmpty = stamps.filter { !$0.isEmpty }
        guard nonEmpty.count == n else { return SchedulerRun(rate: 0, kvBytes: kv, maxTokens: maxTokens) }
        let start = nonEmpty.map { $0[0] }.max()!
        let end = nonEmpty.map { $0.last! }.min()!
        let counted = nonEmpty.reduce(0) { $0 + $1.filter { $0 > start && $0 <= end }.count }
        return SchedulerRun(rate: end > start ? Double(counted) / (end - start) : 0, kvBytes: kv, maxTokens: maxTokens)
    }

    // MARK: Python

    /// Runs `script` with `python`; the script prints `key=value` lines.
    private func runPython(_ script: String, args: [String], work: URL) -> PythonResult {
        PythonRunner.run(python: python, script: script, name: "script-\(abs(script.hashValue)).py", args: args, work: work)
    }
}

// MARK: the Qwen3-4B shape

extension EngineBench {
    static func qwen3_4BConfig() throws -> ModelConfig {
        // Qwen/Qwen3-4B's config.json: 36 layers, hidden 2560, 32 query / 8 KV heads of 128, FFN 9728, tied.
        try ModelConfig(
            modelType: .qwen3, hiddenSize: 2560, numHiddenLayers: 36, numAttentionHeads: 32, numKeyValueHeads: 8,
            headDim: 128, intermediateSize: 9728, vocabSize: 151_936, rmsNormEps: 1e-6, maxPositionEmbeddings: 40_960,
            tieWordEmbeddings: true, rope: RopeParameters(theta: 1_000_000), dtype: "bfloat16", eosTokenIds: [1002])
    }

    /// What the paper's published policy costs on this CPU: the Qwen3-4B shape with random BF16 weights, loaded
    /// in 8 bits (streamed: each tensor is widened, quantised and dropped, so the model is never whole in
    /// float32), against the same-run sgemv bandwidth.
    func runQwen3_4B() async throws {
        let load0 = loadAverage()
        let core = BLASCore.selectOptimizedCore() ?? "?"
        let bw = sgemvBandwidth(rows: 151_936, cols: 896, seconds: max(1, seconds / 2))
        let dir = URL(fileURLWithPath: "/tmp/prompt-r1-bench/qwen3-4b-shape")
        let cfg = try Self.qwen3_4BConfig()
        if !FileManager.default.fileExists(atPath: dir.appendingPathComponent("model.safetensors").path) {
            FileHandle.standardError.write(
                "writing a Qwen3-4B-shaped random BF16 checkpoint to \(dir.path) (once, 8 GB)...\n".data(using: .utf8)!)
            let (_, t) = try Stopwatch.measure { try SyntheticCheckpoint.write(config: cfg, to: dir, seed: 11, dtype: .BF16) }
            FileHandle.standardError.write("written in \(f1(t)) s\n".data(using: .utf8)!)
        }
        let rss0 = ProcStatus.bytes("VmRSS") ?? 0
        let (m, loadSeconds) = try Stopwatch.measure { try TransformerModel.load(from: dir, weightFormat: .q8) }
        let rssLoad = ProcStatus.bytes("VmRSS") ?? 0
        let hwmLoad = ProcStatus.bytes("VmHWM") ?? 0
        print("engine bench, Qwen3-4B shape: \(dir.path)")
        print(
            "  qwen3 hidden 2560, 36 layers, 32/8 heads of 128, FFN 9728, vocab 151936, tied; \(m.parameterCount) parameters "
                + "(\(gb(m.parameterCount * 2)) GB BF16 on disk), loaded in 8 bits in \(f1(loadSeconds)) s")
        print("  OpenBLAS core \(core), \(threads) threads; load average at start \(load0)")
        _ = try m.prefill(tokens: randomTokens(128, seed: 98), cache: m.makeCache(initialCapacity: 128))  // warm-up
        var pre: [Int: Double] = [:]
        for len in [128, 512] {
            var times: [Double] = []
            let clock = Stopwatch()
            while times.isEmpty || (times.count < 3 && clock.seconds < seconds) {
                let cache = m.makeCache(initialCapacity: len)
                let toks = randomTokens(len, seed: UInt64(2000 + times.count))
                times.append(try Stopwatch.measure { try m.prefill(tokens: toks, cache: cache) }.1)
            }
            pre[len] = Double(len) / median(times)
        }
        m.profiler.reset()
        m.profiler.enabled = true
        _ = try m.prefill(tokens: randomTokens(512, seed: 4242), cache: m.makeCache(initialCapacity: 512))
        m.profiler.enabled = false
        let profile = m.profiler.report
        let prompt = randomTokens(64, seed: 7)
        let cache = m.makeCache(initialCapacity: 64 + 64)
        var logits = try m.prefill(tokens: prompt, cache: cache)
        var steps: [Double] = []
        let clock = Stopwatch()
        while steps.count < 8 || (clock.seconds < seconds && steps.count < 64) {
            let next = Int32(Sampler.argmax(logits))
            let (l, t) = try Stopwatch.measure { try m.decode([(token: next, cache: cache)])[0] }
            logits = l
            steps.append(t)
        }
        let decode = 1 / median(steps)
        let x16 = await schedulerRun(m, sequences: 16, promptLen: 64, maxTokens: 12)
        let hwm = ProcStatus.bytes("VmHWM") ?? 0
        let q8Bytes = m.quantizedWeightBytes
        // Per decode token: the int8 projections and head, plus the float32 norms and one embedding row.
        let limit = bw.gbps * 1e9 / Double(q8Bytes)
        // The collab benchmark's episode (gateway-bench collab): a 662-token first prompt, of which the protocol
        // prefix (about 40%) comes from the prefix cache, 2 turns of 32 tokens, one injected answer of ~60 tokens.
        let prefillTokens = 662 * 6 / 10 + 60
        let episode = Double(prefillTokens) / pre[512]! + 64 / decode
        var table = ResultTable()
        table.section("memory bandwidth baseline")
        table.row("sgemv 151936x896 F32 (545 MB)", "\(f1(bw.gbps)) GB/s", "median of \(bw.runs); best \(f1(bw.best)) GB/s", "")
        table.row("int8 bytes read per decode token", "\(gb(q8Bytes)) GB", "values + scales of every projection and lm_head", "")
        table.row("bandwidth-limited 8-bit decode", "\(f2(limit)) tok/s", "sgemv GB/s / bytes per token", "")
        table.section("8-bit weights (int8 GEMM, \(Q8KernelLevel.current))")
        table.row("quantised at load", "\(mb(q8Bytes)) MB", "in \(f1(loadSeconds)) s from BF16", "")
        table.row(
            "RSS after load / peak during load", "\(mb(rssLoad - rss0)) / \(mb(hwmLoad)) MB",
            "8-bit copy \(mb(q8Bytes)) + F32 embedding \(mb(cfg.vocabSize * cfg.hiddenSize * 4)) MB", "")
        table.row("prefill 128-token prompt", "\(f1(pre[128]!)) tok/s", "", "")
        table.row("prefill 512-token prompt", "\(f1(pre[512]!)) tok/s", "", "")
        table.row("  time by section", "", profile, "")
        table.row("decode x1 (median step)", "\(f2(decode)) tok/s", "\(pct(decode / limit)) of the 8-bit bandwidth limit", "")
        table.row("decode x16 aggregate (scheduler)", "\(f2(x16.rate)) tok/s", "\(f2(x16.rate / decode))x decode x1", "")
        table.row("peak RSS (VmHWM)", "\(mb(hwm)) MB", "", "")
        table.section("what an episode costs (estimate from the rates above)")
        table.row(
            "collab episode, concurrency 1", "\(f1(episode)) s",
            "\(prefillTokens) prefill tokens at the 512-token rate + 64 decoded tokens", "")
        print("")
        table.print()
        print("")
        print("load average at end \(loadAverage())")
    }
}

/// The Python sides of the comparisons. Each prints `key=value` lines, or `skip=<reason>` when a module is
/// missing.
enum PythonScripts {
    static let tokenizers = #"""
        import sys, time, json
        try:
            import tokenizers
            from tokenizers import Tokenizer
        except Exception as e:
            print("skip=tokenizers not importable (%s)" % e); sys.exit(0)
        tok = Tokenizer.from_file(sys.argv[1])
        text = open(sys.argv[2], encoding="utf-8").read()
        nbytes = len(text.encode("utf-8"))
        enc = tok.encode(text, add_special_tokens=False)
        times = []
        for _ in range(3):
            t = time.perf_counter(); enc = tok.encode(text, add_special_tokens=False); times.append(time.perf_counter() - t)
        times.sort()
        json.dump(enc.ids, open(sys.argv[3], "w"))
        # The same text as ~paragraph-sized pieces, one encode call each (one thread, like ours).
        pieces = text.split("\n\n")
        pieces = [p + "\n\n" for p in pieces[:-1]] + [pieces[-1]]
        ptimes = []
        for _ in range(3):
            t = time.perf_counter()
            for p in pieces: tok.encode(p, add_special_tokens=False)
            ptimes.append(time.perf_counter() - t)
        ptimes.sort()
        print("version=%s" % tokenizers.__version__)
        print("mbps=%f" % (nbytes / 1e6 / times[1]))
        print("mbps_pieces=%f" % (nbytes / 1e6 / ptimes[1]))
        print("pieces=%d" % len(pieces))
        """#

    static let torchDecode = #"""
        import sys, time, json, os, tempfile
        try:
            import torch
            import transformers
        except Exception as e:
            print("skip=torch/transformers not importable (%s)" % e); sys.exit(0)
        folder, threads, prompt, ncompare, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        torch.set_num_threads(threads)
        cfg = json.load(open(os.path.join(folder, "config.json")))
        arch = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}.get(cfg["model_type"])
        if arch is None:
            print("skip=no PyTorch class for model_type %s" % cfg["model_type"]); sys.exit(0)
        # A Hugging Face style config next to a link to the same weights file.
        theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))
        hf = {k: v for k, v in cfg.items() if k not in ("rope_parameters", "bos_token_id", "eos_token_id")}
        hf.update({"architectures": [arch], "rope_theta": theta, "torch_dtype": "float32", "hidden_act": "silu",
                   "rope_parameters": {"rope_type": "default", "rope_theta": theta}, "use_sliding_window": False})
        tmp = tempfile.mkdtemp()
        json.dump(hf, open(os.path.join(tmp, "config.json"), "w"))
        os.symlink(os.path.abspath(os.path.join(folder, "model.safetensors")), os.path.join(tmp, "model.safetensors"))
        Model = getattr(transformers, arch)
        model = Model.from_pretrained(tmp, torch_dtype=torch.float32)
        model.eval()
        ids = torch.tensor([[int(t) for t in prompt.split(",")]])
        with torch.inference_mode():
            # Prefill speed on 128 tokens (median of 3), then greedy decode after the given prompt.
            gen = torch.Generator().manual_seed(1)
            p128 = torch.randint(0, cfg["vocab_size"] - 1, (1, 128), generator=gen)
            model(input_ids=p128, use_cache=True)
            pt = []
            for _ in range(3):
                t = time.perf_counter(); model(input_ids=p128, use_cache=True); pt.append(time.perf_counter() - t)
            pt.sort()
            out = model(input_ids=ids, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            greedy = []
            n = max(steps, ncompare)
            t0 = time.perf_counter()
            for i in range(n):
                greedy.append(int(nxt[0, 0]))
                out = model(input_ids=nxt, past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            dt = time.perf_counter() - t0
        print("version=%s" % torch.__version__)
        print("prefill128_tps=%f" % (128 / pt[1]))
        print("decode_tps=%f" % (n / dt))
        print("greedy=%s" % ",".join(str(t) for t in greedy[:ncompare]))
        """#
}

/// Deterministic ~N bytes of mixed text: English prose, code, JSON, numbers, accented and CJK text, emoji,
/// and runs of whitespace, so every pre-tokenizer branch is exercised.
enum MixedText {
    static func make(bytes: Int, seed: UInt64) -> String {
        let words = [
            "the", "gateway", "returns", "a", "streamed", "completion", "when", "policy", "model", "decides",
            "to", "ask", "upstream", "for", "help", "with", "question", "and", "answer", "is", "short",
            "Tokenizer", "throughput", "matters", "because", "every", "request", "passes", "through", "it",
            "don't", "it's", "we'll", "they're", "I'm", "you've", "naïve", "café", "résumé", "Zürich",
            "日本語", "のテキスト", "中文分词", "测试", "한국어", "Привет", "мир", "Ελληνικά", "العربية", "हिन्दी",
            "🙂", "🚀", "👍🏽", "∑", "≈", "→",
        ]
        let code = [
            "func encode(_ text: String) -> [Int32] {\n    return bpe.merge(pieces)\n}\n",
            "for (i, x) in xs.enumerated() where x > 0 { total += x * Float(i) }\n",
            "{\"model\": \"qwen\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"stream\": true}\n",
            "if err != nil {\n\treturn fmt.Errorf(\"read %s: %w\", path, err)\n}\n",
            "SELECT id, created_at FROM requests WHERE status = 200 ORDER BY id DESC LIMIT 50;\n",
        ]
        var rng = Xoshiro256(seed: seed)
        var out = ""
        out.reserveCapacity(bytes + 256)
        var n = 0
        while n < bytes {
            var piece: String
            switch rng.next() % 10 {
            case 0: piece = code[Int(rng.next() % UInt64(code.count))]
            case 1: piece = " \(rng.next() % 100_000).\(rng.next() % 100)"
            case 2: piece = rng.next() % 2 == 0 ? ".\n\n" : ",   "
            default:
                piece = " " + words[Int(rng.next() % UInt64(words.count))]
                if rng.next() % 7 == 0 { piece = " " + piece.dropFirst().capitalized }
            }
            out += piece
            n += piece.utf8.count
        }
        return out
    }
}

/// A fixed-width text table with a verdict column.
struct ResultTable {
    private var lines: [(String, String, String, String)?] = []
    private var sections: [Int: String] = [:]
    mutating func section(_ title: String) { sections[lines.count] = title }
    mutating func row(_ metric: String, _ value: String, _ baseline: String, _ verdict: String) {
        lines.append((metric, value, baseline, verdict))
    }
    func print() {
        let rows = lines.compactMap { $0 }
        let w0 = max(6, rows.map(\.0.count).max() ?? 0)
        let w1 = max(5, rows.map(\.1.count).max() ?? 0)
        let w2 = max(18, rows.map(\.2.count).max() ?? 0)
        func fmt(_ a: String, _ b: String, _ c: String, _ d: String) -> String {
            pad(a, w0 + 2) + pad(b, w1 + 2) + pad(c, w2 + 2) + d
        }
        Swift.print(fmt("figure", "value", "baseline / target", "result"))
        Swift.print(String(repeating: "-", count: w0 + w1 + w2 + 12))
        for (i, l) in lines.enumerated() {
            if let s = sections[i] { Swift.print("[\(s)]") }
            if let l { Swift.print(fmt(l.0, l.1, l.2, l.3)) }
        }
    }
}

enum ProcStatus {
    /// A `kB` field of /proc/self/status in bytes (nil where there is no procfs).
    static func bytes(_ key: String) -> Int? {
        guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
        for line in s.split(separator: "\n") where line.hasPrefix(key + ":") {
            let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if parts.count >= 2, let kb = Int(parts[1]) { return kb * 1024 }
        }
        return nil
    }
}

private func randomTokens(_ n: Int, seed: UInt64, vocab: Int = 150_000) -> [Int32] {
    var rng = Xoshiro256(seed: seed)
    return (0..<n).map { _ in Int32(rng.next() % UInt64(vocab)) }
}

private func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.isEmpty ? .nan : (s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2)
}

private func loadAverage() -> String {
    (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").prefix(3).joined(separator: " ") ?? "?"
}

private func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
private func verdict(_ ok: Bool) -> String { ok ? "PASS" : "MISS" }
private func f0(_ x: Double) -> String { String(format: "%.0f", x) }
private func f1(_ x: Double) -> String { String(format: "%.1f", x) }
private func f2(_ x: Double) -> String { String(format: "%.2f", x) }
private func f3(_ x: Double) -> String { String(format: "%.3f", x) }
private func pct(_ x: Double) -> String { String(format: "%.0f%%", 100 * x) }
private func mb(_ b: Int) -> String { String(format: "%.0f", Double(b) / 1e6) }
private func gb(_ b: Int) -> String { String(format: "%.2f", Double(b) / 1e9) }

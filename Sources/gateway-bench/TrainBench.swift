import ArgumentParser
import Foundation
import PolicyEngine

/// Training speed of the policy on a Qwen2.5-0.5B-shaped model: tokens/s of one forward + backward step
/// (the gradient of sum(w * logprobs) over one sequence, as a GRPO/PPO update does) with LoRA and with full
/// fine-tuning, beside the same step in PyTorch (float32, CPU, same thread count, transformers model from the
/// same folder) measured in the same run. Target: at least 0.8x PyTorch.
struct TrainBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Policy training step (forward + backward) tokens/s, LoRA and full, against PyTorch in the same run.")

    @OptionGroup var weights: BenchModelOptions
    @Option(help: "OpenBLAS threads (and torch threads).") var threads = 2
    @Option(help: "Sequence length of the step.") var tokens = 256
    @Option(help: "Timed steps per mode (median reported), after one warm-up step.") var runs = 3
    @Option(help: "LoRA rank (targets q/k/v/o_proj).") var rank = 8
    @Option(help: "LoRA alpha.") var alpha: Float = 16
    @Option(help: "Comma-separated modes: lora, full.") var modes = "lora,full"
    @Option(
        name: .customLong("activation-budget-mb"),
        help: "Also time each mode with this TrainableModel.activationBudgetBytes (MB of kept MLP activations; 0: skip).")
    var activationBudgetMB = 1024
    @Option(name: .customLong("python"), help: "Python for the PyTorch comparison.") var python = "python3"
    @Flag(name: .customLong("no-python"), help: "Skip the PyTorch comparison.") var noPython = false

    func run() async throws {
        BLASThreads.set(threads)
        let core = BLASCore.selectOptimizedCore() ?? "?"
        let dir = try weights.folder()
        let modeList = modes.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        let T = tokens
        // The loss weights: the first quarter is "prompt" (weight 0), the rest "completion".
        let weights = (0..<(T - 1)).map { i -> Float in i < T / 4 ? 0 : 0.01 }
        var rng = Xoshiro256(seed: 1)
        let config = try ModelConfig.load(from: dir.appendingPathComponent("config.json"))
        let ids = (0..<T).map { _ in Int32(rng.next() % UInt64(config.vocabSize - 1)) }
        print("train bench: \(dir.path)")
        print(
            "  \(config.modelType.rawValue) hidden \(config.hiddenSize), \(config.numHiddenLayers) layers, "
                + "\(config.numAttentionHeads)/\(config.numKeyValueHeads) heads, FFN \(config.intermediateSize), vocab \(config.vocabSize); "
                + "\(T) tokens per step (\(T - 1 - T / 4) weighted), LoRA rank \(rank) alpha \(alpha) on q/k/v/o")
        print(
            "  OpenBLAS core \(core), \(threads) threads; \(ProcessInfo.processInfo.activeProcessorCount) CPUs; load average at start \(trainLoadAverage())"
        )

        struct Result {
            var step: Double, best: Double, forward: Double, backward: Double, trainable: Int, total: Int, rss: Int
            var adam: Double, rssAdam: Int, sections: String
            var budgetStep: Double?, budgetBest: Double?, tapeMB: Int, budgetTapeMB: Int?
        }
        var ours: [String: Result] = [:]
        for mode in modeList {
            let tm: TrainingMode
            switch mode {
            case "lora": tm = .lora(LoRAConfig(rank: rank, alpha: alpha))
            case "full": tm = .full
            default: throw ValidationError("unknown mode '\(mode)' (lora, full)")
            }
            let (m, loadSeconds) = try Stopwatch.measure { try TrainableModel(directory: dir, mode: tm) }
            var fw: [Double] = []
            var bw: [Double] = []
            for i in 0...runs {
                m.zeroGradients()
                let (tape, tf) = Stopwatch.measure { m.forward(ids) }
                let (_, tb) = Stopwatch.measure { m.backward(tape, dLogprobs: weights) }
                if i > 0 {
                    fw.append(tf)
                    bw.append(tb)
                }  // step 0 warms up (page faults, workspace)
            }
            let steps = zip(fw, bw).map { $0 + $1 }
            let tapeMB = m.forward(ids).byteCount / 1_000_000
            let rss = ProcStatus.bytes("VmRSS") ?? 0
            // The same steps keeping MLP activations in the tape (no gate/up recompute).
            var budgetSteps: [Double] = []
            var budgetTapeMB: Int?
            if activationBudgetMB > 0 {
                m.activationBudgetBytes = activationBudgetMB * 1_000_000
                for i in 0...runs {
                    m.zeroGradients()
                    let (_, t) = Stopwatch.measure { m.backward(m.forward(ids), dLogprobs: weights) }
                    if i > 0 { budgetSteps.append(t) }
                }
                budgetTapeMB = m.forward(ids).byteCount / 1_000_000
                m.activationBudgetBytes = 0
            }
            // One more step with the section profiler on (where the time goes), then AdamW updates (their
            // moments are the rest of the training memory).
            m.profiler.enabled = true
            m.backward(m.forward(ids), dLogprobs: weights)
            m.profiler.enabled = false
            let sections = m.profiler.seconds.sorted { $0.value > $1.value }.prefix(8)
                .map { "\($0.key) \(String(format: "%.2f", $0.value))" }.joined(separator: ", ")
            let opt = AdamW(model: m, config: AdamWConfig(lr: 1e-6))
            var adam: [Double] = []
            for _ in 0..<3 { adam.append(Stopwatch.measure { opt.update(learningRate: 1e-6) }.1) }
            let r = Result(
                step: trainMedian(steps), best: steps.min()!, forward: trainMedian(fw), backward: trainMedian(bw),
                trainable: m.trainableParameterCount, total: m.parameterCount, rss: rss, adam: trainMedian(adam),
                rssAdam: ProcStatus.bytes("VmRSS") ?? 0, sections: sections,
                budgetStep: budgetSteps.isEmpty ? nil : trainMedian(budgetSteps), budgetBest: budgetSteps.min(),
                tapeMB: tapeMB, budgetTapeMB: budgetTapeMB)
            ours[mode] = r
            print(
                "  \(mode): loaded in \(String(format: "%.1f", loadSeconds)) s, \(r.trainable) trainable parameters; "
                    + "step times " + steps.map { String(format: "%.2f", $0) }.joined(separator: ", ") + " s"
                    + (budgetSteps.isEmpty
                        ? "" : "; with kept activations " + budgetSteps.map { String(format: "%.2f", $0) }.joined(separator: ", ") + " s"))
            print("    sections (s): \(r.sections)")
        }

        var torch: PythonResult?
        if !noPython {
            print("  running the PyTorch step (loads the model in a subprocess)...")
            torch = runTorch(dir: dir, modes: modeList)
            if let t = torch, !t.ok { print("  PyTorch comparison skipped: \(t.error)") }
        }

        var table = ResultTable()
        for mode in modeList {
            guard let r = ours[mode] else { continue }
            table.section("\(mode) (\(r.trainable) trainable)")
            table.row(
                "forward+backward tok/s (best / median)", String(format: "%.1f / %.1f", Double(T) / r.best, Double(T) / r.step), "", "")
            table.row("  forward s / backward s (median)", String(format: "%.2f / %.2f", r.forward, r.backward), "", "")
            table.row("  tape MB", "\(r.tapeMB)", "layer inputs only", "")
            table.row("  AdamW update s", String(format: "%.3f", r.adam), "", "")
            table.row(
                "  RSS MB (weights+grads / +AdamW)", "\(r.rss / 1_000_000) / \(r.rssAdam / 1_000_000)",
                "\((r.total + r.trainable) * 4 / 1_000_000) / \((r.total + 3 * r.trainable) * 4 / 1_000_000) (4 B each)", "")
            let t = torch.flatMap { $0.ok ? $0 : nil }
            let tBest = t?.values["\(mode)_seconds"]
            let tMedian = t?.values["\(mode)_median"]
            if let tBest, let tMedian {
                table.row(
                    "  PyTorch \(t?.text["version"] ?? "") tok/s (best / median)",
                    String(format: "%.1f / %.1f", Double(T) / tBest, Double(T) / tMedian), "", "")
                let ratio = tBest / r.best
                table.row(
                    "  vs PyTorch (best / median)", String(format: "%.2fx / %.2fx", ratio, tMedian / r.step),
                    "target >= 0.8x", ratio >= 0.8 ? "PASS" : "MISS")
            }
            if let bs = r.budgetStep, let bb = r.budgetBest, let mb = r.budgetTapeMB {
                table.row(
                    "  with kept MLP activations tok/s", String(format: "%.1f / %.1f", Double(T) / bb, Double(T) / bs),
                    "tape \(mb) MB (activationBudgetBytes)", "")
                if let tBest, let tMedian {
                    let ratio = tBest / bb
                    table.row(
                        "    vs PyTorch (best / median)", String(format: "%.2fx / %.2fx", ratio, tMedian / bs),
                        "target >= 0.8x", ratio >= 0.8 ? "PASS" : "MISS")
                }
            }
        }
        table.print()
    }

    private func runTorch(dir: URL, modes: [String]) -> PythonResult {
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("train-bench-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: work) }
        do { try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true) } catch {
            return PythonResult(ok: false, error: "\(error)")
        }
        return PythonRunner.run(
            python: python, script: Self.torchScript, name: "torch_train.py",
            args: [
                dir.path, String(threads), String(tokens), String(runs), modes.joined(separator: ","),
                String(rank), String(alpha),
            ], work: work)
    }

    /// The same step in PyTorch: transformers model (default sdpa attention, float32) from the same weights file;
    /// LoRA as forward hooks y + s (x A^T) B^T on q/k/v/o with only A, B requiring gradients.
    static let torchScript = #"""
        import sys, time, json, os, tempfile
        try:
            import torch
            import transformers
        except Exception as e:
            print("skip=torch/transformers not importable (%s)" % e); sys.exit(0)
        folder, threads, T, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
        modes = sys.argv[5].split(",")
        rank, alpha = int(sys.argv[6]), float(sys.argv[7])
        torch.set_num_threads(threads)
        cfg = json.load(open(os.path.join(folder, "config.json")))
        arch = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}.get(cfg["model_type"])
        if arch is None:
            print("skip=no PyTorch class for model_type %s" % cfg["model_type"]); sys.exit(0)
        # A Hugging Face style config next to links to the same weight files.
        theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))
        hf = {k: v for k, v in cfg.items() if k not in ("rope_parameters", "bos_token_id", "eos_token_id")}
        hf.update({"architectures": [arch], "rope_theta": theta, "torch_dtype": "float32", "hidden_act": "silu",
                   "rope_parameters": {"rope_type": "default", "rope_theta": theta}, "use_sliding_window": False})
        if (cfg.get("rope_parameters") or {}).get("rope_type", "default") != "default" or cfg.get("rope_scaling"):
            hf = dict(cfg)  # keep the scaling as written
        tmp = tempfile.mkdtemp()
        json.dump(hf, open(os.path.join(tmp, "config.json"), "w"))
        for f in os.listdir(folder):
            if f.endswith(".safetensors") or f.endswith(".index.json"):
                os.symlink(os.path.abspath(os.path.join(folder, f)), os.path.join(tmp, f))
        model = getattr(transformers, arch).from_pretrained(tmp, dtype=torch.float32)  # default attention (sdpa)
        model.train()
        gen = torch.Generator().manual_seed(1)
        ids = torch.randint(0, cfg["vocab_size"] - 1, (1, T), generator=gen)
        w = torch.zeros(T - 1)
        w[T // 4:] = 0.01

        def step():
            logits = model(input_ids=ids, use_cache=False).logits[0]
            lp = torch.log_softmax(logits[:-1], dim=-1).gather(1, ids[0, 1:, None])[:, 0]
            (lp * w).sum().backward()

        print("version=%s" % torch.__version__)
        for mode in modes:
            hooks = []
            if mode == "lora":
                for p in model.parameters(): p.requires_grad_(False)
                scale = alpha / rank
                for layer in model.model.layers:
                    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                        lin = getattr(layer.self_attn, name)
                        a = torch.nn.Parameter(torch.randn(rank, lin.in_features, generator=gen) / lin.in_features ** 0.5)
                        b = torch.nn.Parameter(torch.zeros(lin.out_features, rank))
                        hooks.append(lin.register_forward_hook(lambda m, i, o, a=a, b=b: o + scale * (i[0] @ a.T) @ b.T))
            else:
                for p in model.parameters(): p.requires_grad_(True)
            step()  # warm-up
            times = []
            for _ in range(runs):
                model.zero_grad(set_to_none=False)
                t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
            times.sort()
            print("%s_seconds=%f" % (mode, times[0]))
            print("%s_median=%f" % (mode, times[len(times) // 2]))
            for h in hooks: h.remove()
            model.zero_grad(set_to_none=True)
        """#
}

private func trainMedian(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.isEmpty ? .nan : (s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2)
}

private func trainLoadAverage() -> String {
    (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").prefix(3).joined(separator: " ") ?? "?"
}

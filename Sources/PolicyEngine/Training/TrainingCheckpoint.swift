import Foundation

extension TrainableModel {
    /// The files copied unchanged from the source folder by `exportCheckpoint` (when present).
    public static let checkpointSideFiles = [
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json",
        "chat_template.jinja", "chat_template.json",
    ]

    /// Writes a complete Hugging Face checkpoint folder: the side files above copied from `sourceDirectory`
    /// and `model.safetensors` with every weight in float32, LoRA adapters merged (W + scale * B A).
    /// Tied embeddings are written once (no lm_head.weight), as transformers does.
    public func exportCheckpoint(to dir: URL, sourceDirectory: URL) throws {
        let fm = FileManager.default
        try fm.createDirectory(at: dir, withIntermediateDirectories: true)
        for f in Self.checkpointSideFiles {
            let src = sourceDirectory.appendingPathComponent(f)
            guard fm.fileExists(atPath: src.path) else { continue }
            let dst = dir.appendingPathComponent(f)
            if fm.fileExists(atPath: dst.path) { try fm.removeItem(at: dst) }
            try fm.copyItem(at: src, to: dst)
        }
        // A stale shard index would win over model.safetensors when loading.
        let index = dir.appendingPathComponent("model.safetensors.index.json")
        if fm.fileExists(atPath: index.path) { try fm.removeItem(at: index) }

        lock.lock()
        defer { lock.unlock() }
        let entries = SyntheticCheckpoint.tensorShapes(for: config)
        var merged: [String: TrainLinear] = [:]
        for layer in layers { for lin in layer.linears where lin.loraA != nil { merged[lin.weight.name] = lin } }
        let params = Dictionary(allParams.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let tmp = dir.appendingPathComponent(".model.safetensors.partial")
        try SafetensorsWriter.write(entries: entries, metadata: ["format": "pt"], to: tmp) { i, buf in
            let name = entries[i].name
            let p = params[name]!
            buf.baseAddress!.update(from: p.value, count: p.count)
            if let lin = merged[name], let a = lin.loraA, let b = lin.loraB {
                // W[out, in] += scale * B[out, r] A[r, in]
                let r = a.shape[0]
                TrainKernels.gemmNN(
                    lin.outDim, lin.inDim, r, b.value, lda: r, a.value, ldb: lin.inDim,
                    buf.baseAddress!, ldc: lin.inDim, alpha: loraScale, beta: 1)
            }
        }
        let final = dir.appendingPathComponent("model.safetensors")
        if fm.fileExists(atPath: final.path) { try fm.removeItem(at: final) }
        try fm.moveItem(at: tmp, to: final)
    }

    /// Trainable parameters (LoRA adapters, or every weight for full fine-tuning) as float32 safetensors.
    public func saveTrainableState(to file: URL) throws {
        lock.lock()
        defer { lock.unlock() }
        let ps = trainableParams
        var meta = ["format": "gateway-trainable-state"]
        if case .lora(let lc) = mode { meta["lora"] = String(decoding: try JSONEncoder().encode(lc), as: UTF8.self) }
        try replaceAtomically(file) { tmp in
            try SafetensorsWriter.write(entries: ps.map { ($0.name, $0.shape) }, metadata: meta, to: tmp) { i, buf in
                buf.baseAddress!.update(from: ps[i].value, count: ps[i].count)
            }
        }
    }

    /// Restores every trainable parameter from a file written by `saveTrainableState` (names and shapes must
    /// match; extra tensors are an error too).
    public func loadTrainableState(from file: URL) throws {
        let f = try SafetensorsFile(url: file)
        guard f.metadata["format"] == "gateway-trainable-state" else {
            throw TrainingError.badState(file: file.lastPathComponent, reason: "not a trainable-state file")
        }
        let ckpt = try SafetensorsCheckpoint(files: [f])
        lock.lock()
        defer { lock.unlock() }
        let ps = trainableParams
        let expected = Set(ps.map(\.name))
        if let extra = f.tensors.keys.first(where: { !expected.contains($0) }) {
            throw TrainingError.badState(
                file: file.lastPathComponent, reason: "unexpected tensor '\(extra)' (different mode or LoRA targets?)")
        }
        var loaded: [(TrainParam, FloatTensor)] = []
        for p in ps { loaded.append((p, try ckpt.floatTensor(p.name, shape: p.shape))) }
        for (p, t) in loaded { p.value.update(from: t.pointer, count: p.count) }
        weightsVersion &+= 1
    }
}

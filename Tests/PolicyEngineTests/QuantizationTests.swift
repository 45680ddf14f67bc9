import Foundation
import XCTest

@testable import PolicyEngine

/// 8-bit weights (`WeightFormat.q8`): the quantiser, both product paths, and whole models against float32.
final class QuantizationTests: XCTestCase {
    private func randomMatrix(_ n: Int, seed: UInt64, scale: Float = 1) -> [Float] {
        var rng = Xoshiro256(seed: seed)
        return (0..<n).map { _ in Float(rng.nextUnit() * 2 - 1) * scale }
    }

    func testQuantiseRoundTripIsWithinHalfAStep() throws {
        let rows = 5
        let cols = 96  // 96: blocks of 32
        var w = randomMatrix(rows * cols, seed: 1)
        w[7] = 40  // one outlier only coarsens its own block
        let q = try Q8Matrix(quantizing: w, rows: rows, cols: cols, name: "w")
        XCTAssertEqual(q.block, 32)
        var back = [Float](repeating: 0, count: rows * cols)
        q.dequantize(rows: 0, rows, into: &back)
        for r in 0..<rows {
            for j in 0..<cols {
                let step = q.scale(r, block: j / q.block)
                XCTAssertLessThanOrEqual(abs(back[r * cols + j] - w[r * cols + j]), step / 2 + 1e-6, "row \(r) col \(j)")
            }
        }
        XCTAssertEqual(back[7], 40, accuracy: 1e-4)
        XCTAssertLessThan(q.scale(0, block: 1), 0.01, "the block after the outlier keeps a fine scale")
    }

    func testRejectsInputDimensionNotMultipleOf32() {
        XCTAssertThrowsError(try Q8Matrix(quantizing: [Float](repeating: 1, count: 48), rows: 1, cols: 48, name: "mlp.down_proj.weight")) {
            XCTAssertEqual($0 as? QuantizationError, .unsupportedShape(tensor: "mlp.down_proj.weight", shape: [1, 48]))
        }
    }

    /// y = x W^T through the int8 kernel (1-2 rows) and the dequantised sgemm path (more rows), with bias and
    /// accumulation, against float32 products with the dequantised weights.
    func testProductPathsMatchDequantisedFloatProduct() throws {
        let outDim = 70
        let inDim = 128
        let w = randomMatrix(outDim * inDim, seed: 2, scale: 0.1)
        let q = try Q8Matrix(quantizing: w, rows: outDim, cols: inDim, name: "w")
        var wq = [Float](repeating: 0, count: outDim * inDim)
        q.dequantize(rows: 0, outDim, into: &wq)
        let bias = randomMatrix(outDim, seed: 3)
        let scratch = Q8Scratch()
        for rows in [1, 2, 3, 20] {
            let x = randomMatrix(rows * inDim, seed: 10 + UInt64(rows))
            let start = randomMatrix(rows * outDim, seed: 30 + UInt64(rows))
            var y = start
            Q8Kernels.linear(x, rows: rows, weight: q, bias: bias, into: &y, accumulate: true, scratch: scratch)
            for r in 0..<rows {
                for o in 0..<outDim {
                    var ref = start[r * outDim + o] + bias[o]
                    var mag: Float = 0
                    for j in 0..<inDim {
                        ref += x[r * inDim + j] * wq[o * inDim + j]
                        mag += abs(x[r * inDim + j] * wq[o * inDim + j])
                    }
                    // sgemm path: float rounding only. int8 path: activations quantised per block of 64 to 1/254 of
                    // their range, so the error stays well under 1% of the sum of |products|.
                    let tol = 0.01 * mag
                    XCTAssertEqual(y[r * outDim + o], ref, accuracy: tol, "rows \(rows), row \(r), out \(o)")
                }
            }
        }
    }

    /// The trained fixture policy: teacher-forced on its own float32 greedy continuation, the 8-bit model picks
    /// the same token at nearly every position and its logits stay close.
    func testTrainedFixtureAgreesWithFloat32() throws {
        let dir = EngineFixtures.model("promptr1-tiny")
        let f32 = try TransformerModel.load(from: dir)
        let q8 = try TransformerModel.load(from: dir, weightFormat: .q8)
        XCTAssertEqual(q8.weightFormat, .q8)
        XCTAssertEqual(f32.weightFormat, .f32)
        XCTAssertGreaterThan(q8.quantizedWeightBytes, 0)
        XCTAssertLessThan(q8.quantizedWeightBytes, f32.parameterCount * 4 / 3)
        let tok = try Tokenizer(directory: dir)
        let prompt = tok.encode("Question: Which planet is the largest in the Solar System?\nThink step by step.")
        let cf = f32.makeCache()
        let cq = q8.makeCache()
        var lf = try f32.prefill(tokens: prompt, cache: cf)
        var lq = try q8.prefill(tokens: prompt, cache: cq)
        var agree = 0
        var maxErr: Float = 0
        var span: Float = 0
        let steps = 48
        for _ in 0..<steps {
            let next = Int32(Sampler.argmax(lf))
            if Int32(Sampler.argmax(lq)) == next { agree += 1 }
            maxErr = max(maxErr, EngineFixtures.maxAbsDiff(lf, lq))
            span = max(span, lf.max()! - lf.min()!)
            lf = try f32.decode([(token: next, cache: cf)])[0]
            lq = try q8.decode([(token: next, cache: cq)])[0]
        }
        XCTAssertGreaterThanOrEqual(agree, steps - 2, "greedy agreement \(agree)/\(steps)")
        XCTAssertLessThan(maxErr, 0.05 * span, "max |logit error| \(maxErr), F32 logit span \(span)")
    }

    /// Prefill chunks and single-token decode go through the same int8 GEMM, whose result for a row does not
    /// depend on the rows computed with it: the logits agree up to the float rounding of attention.
    func testPrefillPathMatchesDecodePath() throws {
        let q8 = try TransformerModel.load(from: EngineFixtures.model("promptr1-tiny"), weightFormat: .q8)
        let tokens: [Int32] = [5, 17, 300, 42, 9, 700, 12, 88, 3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9]
        let all = try q8.prefillAllLogits(tokens: tokens, cache: q8.makeCache())
        let stepwise = q8.makeCache()
        for (i, t) in tokens.enumerated() {
            let l = try q8.prefill(tokens: [t], cache: stepwise)
            XCTAssertLessThan(EngineFixtures.maxAbsDiff(l, all[i]), 1e-4, "position \(i)")
            XCTAssertEqual(Sampler.argmax(l), Sampler.argmax(all[i]), "position \(i)")
        }
    }

    /// One output row computed alone equals the same row computed among many (the kernels' tiles and the
    /// padding rows never change a row's float operations), on every SIMD level.
    func testARowsResultDoesNotDependOnItsBatch() throws {
        defer { Q8KernelLevel.use(.best) }
        let outDim = 50
        let inDim = 192
        let q = try Q8Matrix(quantizing: randomMatrix(outDim * inDim, seed: 4), rows: outDim, cols: inDim, name: "w")
        let x = randomMatrix(23 * inDim, seed: 5)
        for level in Q8KernelLevel.allCases where level.rawValue <= Q8KernelLevel.best.rawValue {
            Q8KernelLevel.use(level)
            var all = [Float](repeating: 0, count: 23 * outDim)
            Q8Kernels.linear(x, rows: 23, weight: q, bias: nil, into: &all, accumulate: false, scratch: Q8Scratch())
            for r in [0, 7, 22] {
                var one = [Float](repeating: 0, count: outDim)
                x.withUnsafeBufferPointer {
                    Q8Kernels.linear(
                        $0.baseAddress! + r * inDim, rows: 1, weight: q, bias: nil, into: &one, accumulate: false,
                        scratch: Q8Scratch())
                }
                XCTAssertEqual(one, Array(all[(r * outDim)..<((r + 1) * outDim)]), "\(level) row \(r)")
            }
            // 2 to 5 rows (a decode row with draft tokens) have tiles of their own height: still the same.
            for n in 2...5 {
                var few = [Float](repeating: 0, count: n * outDim)
                x.withUnsafeBufferPointer {
                    Q8Kernels.linear(
                        $0.baseAddress! + 3 * inDim, rows: n, weight: q, bias: nil, into: &few, accumulate: false,
                        scratch: Q8Scratch())
                }
                XCTAssertEqual(few, Array(all[(3 * outDim)..<((3 + n) * outDim)]), "\(level) \(n) rows")
            }
        }
    }

    /// Projections whose input dimension is not a multiple of 32 stay float32; the rest is quantised.
    func testMixedModelKeepsUnquantisableProjectionsInFloat32() throws {
        let cfg = try ModelConfig(
            modelType: .qwen2, hiddenSize: 64, numHiddenLayers: 1, numAttentionHeads: 4,
            numKeyValueHeads: 2, intermediateSize: 48, vocabSize: 97, maxPositionEmbeddings: 64,
            tieWordEmbeddings: true)
        let dir = try EngineFixtures.tempDirectory(self)
        try SyntheticCheckpoint.write(config: cfg, to: dir, seed: 3)
        let q8 = try TransformerModel.load(from: dir, weightFormat: .q8)
        let layer = try XCTUnwrap(q8.weights.layers.first)
        XCTAssertNotNil(layer.gate.q8)
        XCTAssertNil(layer.gate.f32, "a quantised projection keeps no float32 copy")
        XCTAssertNil(layer.down.q8, "down_proj has 48 inputs")
        XCTAssertNotNil(layer.down.f32)
        let f32 = try TransformerModel.load(from: dir)
        let a = try f32.prefill(tokens: [1, 2, 3], cache: f32.makeCache())
        let b = try q8.prefill(tokens: [1, 2, 3], cache: q8.makeCache())
        XCTAssertLessThan(EngineFixtures.maxAbsDiff(a, b), 0.05 * (a.max()! - a.min()!))
    }

    /// Every SIMD level this CPU runs computes what the portable C kernel computes: the block dot products are
    /// exact int32 sums (only the float accumulation order may differ), for blocks of 32 and 64, an odd number
    /// of blocks (the kernels pair blocks), extreme values (|q| = 127 on both sides) and 1 to 16 rows of x.
    func testKernelLevelsAgreeWithPortableKernel() throws {
        defer { Q8KernelLevel.use(.best) }
        for (outDim, inDim) in [(37, 96), (40, 192), (9, 64)] {
            var w = randomMatrix(outDim * inDim, seed: 50 + UInt64(inDim))
            for j in 0..<inDim { w[j] = j % 2 == 0 ? 1 : -1 }  // a row of +-max values
            let q = try Q8Matrix(quantizing: w, rows: outDim, cols: inDim, name: "w")
            let scratch = Q8Scratch()
            for rows in [1, 5, 16] {
                var x = randomMatrix(rows * inDim, seed: 70 + UInt64(rows), scale: 3)
                for j in 0..<inDim { x[j] = j % 3 == 0 ? -3 : 3 }  // saturating row: every |q| = 127
                func product(_ level: Q8KernelLevel) -> [Float] {
                    Q8KernelLevel.use(level)
                    var y = [Float](repeating: 0.5, count: rows * outDim)
                    Q8Kernels.quantizeActivations(x, rows: rows, cols: inDim, block: q.block, into: scratch)
                    Q8Kernels.integerProduct(rows: rows, weight: q, scratch: scratch, into: &y, accumulate: true)
                    return y
                }
                let reference = product(.portable)
                XCTAssertEqual(Q8KernelLevel.current, .portable)
                for level in Q8KernelLevel.allCases where level.rawValue <= Q8KernelLevel.best.rawValue && level != .portable {
                    let y = product(level)
                    XCTAssertEqual(Q8KernelLevel.current, level)
                    for k in 0..<y.count {
                        XCTAssertEqual(
                            y[k], reference[k], accuracy: 1e-5 * max(1, abs(reference[k])),
                            "\(level), \(outDim)x\(inDim), rows \(rows), index \(k)")
                    }
                }
            }
        }
    }

    /// The portable kernel against a plain Swift double-precision sum of dequantised products: a check that does
    /// not share code with the C kernels.
    func testPortableKernelMatchesDequantisedSums() throws {
        defer { Q8KernelLevel.use(.best) }
        Q8KernelLevel.use(.portable)
        let outDim = 11
        let inDim = 128
        let rows = 3
        let q = try Q8Matrix(quantizing: randomMatrix(outDim * inDim, seed: 90), rows: outDim, cols: inDim, name: "w")
        let x = randomMatrix(rows * inDim, seed: 91)
        let scratch = Q8Scratch()
        var y = [Float](repeating: 0, count: rows * outDim)
        Q8Kernels.quantizeActivations(x, rows: rows, cols: inDim, block: q.block, into: scratch)
        Q8Kernels.integerProduct(rows: rows, weight: q, scratch: scratch, into: &y, accumulate: false)
        let nb = inDim / q.block
        for i in 0..<rows {
            for r in 0..<outDim {
                var ref = 0.0
                for j in 0..<inDim {
                    let xs = Double(scratch.scales[i * nb + j / q.block])
                    let ws = Double(q.scale(r, block: j / q.block))
                    XCTAssertEqual(Int(scratch.a[i * inDim + j]), abs(Int(scratch.q[i * inDim + j])))
                    XCTAssertEqual(Int(scratch.u[i * inDim + j]), Int(scratch.q[i * inDim + j]) + 128)
                    ref += Double(scratch.q[i * inDim + j]) * xs * Double(q.value(r, j)) * ws
                }
                XCTAssertEqual(Double(y[i * outDim + r]), ref, accuracy: 1e-5 * max(1, abs(ref)), "row \(i), out \(r)")
            }
        }
    }
}

import { describe, expect, it } from 'vitest';
import { runOnnxDemo } from '../../simulations/mnist-demo/onnx-demo.ts';

describe('demo:onnx', () => {
  it("three device processes validate the ONNX update with ONNX Runtime and ack; accuracy rises, and equals our own MLP's on the same digits", async () => {
    const lines: string[] = [];
    const r = await runOnnxDemo({ baseTrain: 1500, fieldTrain: 600, perDevice: 150, epochs: 3, loraEpochs: 8, out: (l) => lines.push(l) });
    expect(r.acked, lines.join('\n')).toBe(3);
    for (const d of r.devices) {
      expect(d.digits).toBe(150);
      expect(d.ortAfter!).toBeGreaterThan(d.ortBefore!);
      expect(d.ortBefore).toBe(d.mlpBefore);
      expect(d.ortAfter).toBe(d.mlpAfter);
    }
    expect(r.ortEqualsMlp).toBe(true);
    expect(r.updatePercent).toBeLessThan(1);
    expect(lines.some((l) => /onnx-device-1: acked; ONNX Runtime on its 150 digits [\d.]+ % → [\d.]+ %; our MLP on the same digits [\d.]+ % → [\d.]+ % \(equal\)/.test(l))).toBe(true);
  }, 180_000);
});

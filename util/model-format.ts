import path from 'node:path';
import { applyToFile } from './apply-file.ts';
import { nodeFs, type FsPort } from '../platform/fs-port.ts';
import { safetensorsDigest } from '../protocol/digest.ts';
import type { Payload } from '../protocol/lowrank.ts';
import type { DeltaSource } from './payload-file.ts';
import { onnxDigest, onnxGraphDifference, type OnnxSkeleton } from '../protocol/onnx.ts';
import type { TensorInfo } from '../protocol/safetensors.ts';
import { digestModelFile as digestSafetensorsFile, ModelFile as SafetensorsFile } from './model-file.ts';
import { applyToOnnxFile, digestOnnxFile, openOnnxFile } from './onnx-file.ts';

/**
 * The model file formats, behind one interface chosen by file extension
 * (`.onnx`: ONNX; anything else: safetensors). Everything that reads, digests or
 * writes a model goes through a ModelFormat, so that build, apply, inspect, publish
 * --full, bundles, devices and gateways take either format alike.
 */

export type ModelFormatName = 'safetensors' | 'onnx';

/** A model opened for reading one tensor at a time. */
export interface ModelFile {
  readonly path: string;
  readonly format: ModelFormatName;
  /** Sorted by the UTF-8 bytes of the name; begin/end: where its bytes are (only end − begin is meaningful across formats). */
  readonly tensors: TensorInfo[];
  readonly fileSize: number;
  readonly dataBytes: number;
  /** ONNX only: the model's skeleton (graph comparisons). */
  readonly onnx?: OnnxSkeleton;
  info(name: string): TensorInfo | undefined;
  /** The model's digest from the digest (protocol/digest.ts) of its tensors, with these tensor values. */
  digestOf(tensorDigest: string): string;
  read(t: TensorInfo, into?: Uint8Array): Promise<Uint8Array>;
  close(): Promise<void>;
}

export interface ModelFormat {
  readonly name: ModelFormatName;
  /** With its dot: what a device names its versions and DIR/current.EXT. */
  readonly extension: string;
  open(file: string, fsys?: FsPort): Promise<ModelFile>;
  digestFile(file: string, fsys?: FsPort): Promise<string>;
  digestBytes(bytes: Uint8Array): string;
  /** Write base + payload to outFile (fsynced, deterministic; null: write nothing); returns the result's digest. */
  apply(baseFile: string, payload: DeltaSource | Payload, outFile: string | null, fsys?: FsPort): Promise<string>;
  /** What differs between two models besides the updatable tensors' values (undefined: nothing). */
  structureDifference(base: ModelFile, target: ModelFile): string | undefined;
}

export const SAFETENSORS: ModelFormat = {
  name: 'safetensors',
  extension: '.safetensors',
  open: (file, fsys = nodeFs) => SafetensorsFile.open(file, fsys),
  digestFile: (file, fsys = nodeFs) => digestSafetensorsFile(file, fsys),
  digestBytes: (bytes) => safetensorsDigest(bytes),
  apply: (base, payload, out, fsys = nodeFs) => applyToFile(base, payload, out, fsys),
  // A safetensors file is its tensors (metadata is not part of the digest): tensor lists are compared by the builder.
  structureDifference: () => undefined,
};

export const ONNX: ModelFormat = {
  name: 'onnx',
  extension: '.onnx',
  open: (file, fsys = nodeFs) => openOnnxFile(file, fsys),
  digestFile: (file, fsys = nodeFs) => digestOnnxFile(file, fsys),
  digestBytes: (bytes) => onnxDigest(bytes),
  apply: (base, payload, out, fsys = nodeFs) => applyToOnnxFile(base, payload, out, fsys),
  structureDifference: (base, target) => (base.onnx && target.onnx ? onnxGraphDifference(base.onnx, target.onnx) : 'one of the models is not ONNX'),
};

export const MODEL_FORMATS: readonly ModelFormat[] = [SAFETENSORS, ONNX];

/** The format of a model file, by its extension (.onnx; anything else is safetensors). */
export function modelFormatOf(file: string): ModelFormat {
  return path.extname(file).toLowerCase() === '.onnx' ? ONNX : SAFETENSORS;
}

/** The format of a model held in memory, by its first bytes: safetensors has a JSON header at byte 8. */
export function modelFormatOfBytes(bytes: Uint8Array): ModelFormat {
  return bytes.byteLength >= 9 && bytes[8] === 0x7b && bytes[4] === 0 && bytes[5] === 0 && bytes[6] === 0 && bytes[7] === 0 ? SAFETENSORS : ONNX;
}

export function openModelFile(file: string, fsys: FsPort = nodeFs): Promise<ModelFile> {
  return modelFormatOf(file).open(file, fsys);
}

/** The digest of a model file in the format its extension says. */
export function digestModel(file: string, fsys: FsPort = nodeFs): Promise<string> {
  return modelFormatOf(file).digestFile(file, fsys);
}

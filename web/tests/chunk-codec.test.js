// Unit tests for the chunk protocol codec (web/file-transfer.js): every message type round-trips
// byte-exactly, and malformed input is refused with a CodecError, never a crash.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  CodecError,
  MSG_CANCEL,
  MSG_CHUNK,
  MSG_DESCRIPTION,
  MSG_REQUEST,
  chunkCount,
  chunkLength,
  CHUNK_SIZE,
  decode,
  encodeCancel,
  encodeChunk,
  encodeDescription,
  encodeFields,
  encodeRequest,
  sha256Hex,
} from '../file-transfer.js';

const SHA = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'; // sha256("")

test('file description round-trips, with the documented layout', () => {
  const d = { name: 'Grüße 📎.txt', fileID: 'f-1', size: 5 * 1024 * 1024 + 3, type: 'text/plain', sha256: SHA };
  const bytes = encodeDescription(d);
  assert.equal(bytes[0], MSG_DESCRIPTION);
  // First field: name, two-byte big-endian length then UTF-8.
  const nameLen = (bytes[1] << 8) | bytes[2];
  assert.equal(nameLen, new TextEncoder().encode(d.name).length);
  assert.equal(new TextDecoder().decode(bytes.subarray(3, 3 + nameLen)), d.name);
  assert.deepEqual(decode(bytes), { kind: 'description', ...d });
  // size is 8 bytes big-endian
  const big = { ...d, size: Number.MAX_SAFE_INTEGER };
  assert.equal(decode(encodeDescription(big)).size, Number.MAX_SAFE_INTEGER);
  assert.equal(decode(encodeDescription({ ...d, size: 0, type: '' })).size, 0);
});

test('request, chunk and cancel round-trip', () => {
  const req = encodeRequest('abc', 0xfffffffe);
  assert.equal(req[0], MSG_REQUEST);
  assert.deepEqual([...req], [0x20, 0, 3, 97, 98, 99, 0, 4, 0xff, 0xff, 0xff, 0xfe]);
  assert.deepEqual(decode(req), { kind: 'request', fileID: 'abc', chunkID: 0xfffffffe });

  const data = new Uint8Array(CHUNK_SIZE).map((_, i) => i & 0xff);
  const chunk = encodeChunk('abc', 7, data);
  assert.equal(chunk[0], MSG_CHUNK);
  const got = decode(chunk.buffer); // ArrayBuffer input, as a data channel delivers it
  assert.equal(got.kind, 'chunk');
  assert.equal(got.chunkID, 7);
  assert.deepEqual([...got.bytes], [...data]);

  const cancel = encodeCancel('abc');
  assert.deepEqual([...cancel], [MSG_CANCEL, 0, 3, 97, 98, 99]);
  assert.deepEqual(decode(cancel), { kind: 'cancel', fileID: 'abc' });
});

test('decoding accepts views at an offset inside a larger buffer', () => {
  const msg = encodeRequest('x', 5);
  const big = new Uint8Array(msg.length + 10);
  big.set(msg, 7);
  assert.deepEqual(decode(big.subarray(7, 7 + msg.length)), { kind: 'request', fileID: 'x', chunkID: 5 });
});

test('malformed messages are refused with a CodecError', () => {
  const bad = [
    new Uint8Array([]),
    new Uint8Array([0x33, 0, 1, 1]), // unknown type
    new Uint8Array([0x20, 0]), // truncated length
    new Uint8Array([0x20, 0, 5, 1, 2]), // field runs past the end
    encodeFields(MSG_REQUEST, [new Uint8Array([97])]), // missing chunkID
    encodeFields(MSG_REQUEST, [new Uint8Array([97]), new Uint8Array([0, 1])]), // chunkID not 4 bytes
    encodeFields(MSG_REQUEST, [new Uint8Array([]), new Uint8Array([0, 0, 0, 1])]), // empty fileID
    encodeFields(MSG_CANCEL, [new Uint8Array([0xff, 0xfe])]), // fileID not UTF-8
    encodeFields(MSG_CANCEL, [new Uint8Array([97]), new Uint8Array([98])]), // extra field
    encodeFields(MSG_DESCRIPTION, [
      new Uint8Array([97]), new Uint8Array([98]), new Uint8Array(8), new Uint8Array(0), new Uint8Array(31),
    ]), // digest not 32 bytes
    encodeFields(MSG_DESCRIPTION, [
      new Uint8Array([97]), new Uint8Array([98]), new Uint8Array(7), new Uint8Array(0), new Uint8Array(32),
    ]), // size not 8 bytes
    encodeFields(MSG_DESCRIPTION, [
      new Uint8Array([97]), new Uint8Array([98]), new Uint8Array(8).fill(0xff), new Uint8Array(0), new Uint8Array(32),
    ]), // size beyond 2^53
  ];
  for (const b of bad) assert.throws(() => decode(b), CodecError, `accepted ${[...b]}`);
});

test('encoders refuse values the format cannot carry', () => {
  assert.throws(() => encodeChunk('a', 0, new Uint8Array(0x10000)), CodecError);
  assert.throws(() => encodeRequest('a', -1), CodecError);
  assert.throws(() => encodeRequest('a', 2 ** 32), CodecError);
  assert.throws(() => encodeRequest('', 1), CodecError);
  assert.throws(() => encodeDescription({ name: 'a', fileID: 'b', size: -1, type: '', sha256: SHA }), CodecError);
  assert.throws(() => encodeDescription({ name: 'a', fileID: 'b', size: 1, type: '', sha256: 'xyz' }), CodecError);
});

test('chunk arithmetic', () => {
  assert.equal(chunkCount(0), 0);
  assert.equal(chunkCount(1), 1);
  assert.equal(chunkCount(CHUNK_SIZE), 1);
  assert.equal(chunkCount(CHUNK_SIZE + 1), 2);
  assert.equal(chunkLength(CHUNK_SIZE + 1, 0), CHUNK_SIZE);
  assert.equal(chunkLength(CHUNK_SIZE + 1, 1), 1);
  assert.equal(chunkLength(CHUNK_SIZE + 1, 2), 0);
});

test('sha256Hex matches the known digest of the empty input', async () => {
  assert.equal(await sha256Hex(new Uint8Array(0)), SHA);
  assert.equal(await sha256Hex(new Blob([])), SHA);
});

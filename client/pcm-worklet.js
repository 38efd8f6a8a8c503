// AudioWorklet: microphone audio at the context's rate (44.1 or 48 kHz, or
// whatever the device runs at) → 16 kHz mono s16le frames of 20 ms, posted
// to the page with the frame's level. Resampling is a windowed-sinc low-pass
// (cutoff 0.45 × 16 kHz) evaluated at each output instant, so nothing above
// 8 kHz folds back into the speech band (Smith, "Digital Audio Resampling",
// https://ccrma.stanford.edu/~jos/resample/).

const TARGET_RATE = 16000;
const FRAME = 320; // 20 ms at 16 kHz
const ZERO_CROSSINGS = 8; // of the sinc on each side, Blackman-windowed (side lobes below -58 dB)
const TABLE_STEPS = 128; // kernel samples per input sample; linear interpolation between them

class Resampler {
  constructor(inRate) {
    this.step = inRate / TARGET_RATE; // input samples per output sample
    this.cutoff = Math.min(1, TARGET_RATE / inRate) * 0.9; // fraction of the input Nyquist
    this.half = ZERO_CROSSINGS / this.cutoff; // kernel half-width in input samples
    this.table = new Float32Array(Math.ceil(this.half * TABLE_STEPS) + 2);
    for (let i = 0; i < this.table.length; i++) {
      const x = i / TABLE_STEPS;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * this.cutoff * x) / (Math.PI * this.cutoff * x);
      const phase = Math.PI * x / this.half; // Blackman window
      const w = x >= this.half ? 0 : 0.42 + 0.5 * Math.cos(phase) + 0.08 * Math.cos(2 * phase);
      this.table[i] = this.cutoff * sinc * w;
    }
    this.buffer = new Float32Array(4096);
    this.length = 0; // samples held in buffer
    this.start = 0; // input index of buffer[0]
    this.time = 0; // input index (fractional) of the next output sample
  }

  kernel(x) {
    const p = Math.abs(x) * TABLE_STEPS;
    const i = Math.floor(p);
    return this.table[i] + (this.table[i + 1] - this.table[i]) * (p - i);
  }

  /** Feed input samples; calls emit(sample) for every output sample now computable. */
  push(input, emit) {
    if (this.length + input.length > this.buffer.length) {
      const bigger = new Float32Array((this.length + input.length) * 2);
      bigger.set(this.buffer.subarray(0, this.length));
      this.buffer = bigger;
    }
    this.buffer.set(input, this.length);
    this.length += input.length;
    while (this.time + this.half < this.start + this.length) {
      const first = Math.max(this.start, Math.ceil(this.time - this.half));
      const last = Math.floor(this.time + this.half);
      let sum = 0;
      for (let k = first; k <= last; k++) sum += this.buffer[k - this.start] * this.kernel(this.time - k);
      emit(sum);
      this.time += this.step;
    }
    // Drop what no future output sample reaches.
    const keepFrom = Math.max(this.start, Math.floor(this.time - this.half));
    this.buffer.copyWithin(0, keepFrom - this.start, this.length);
    this.length -= keepFrom - this.start;
    this.start = keepFrom;
  }
}

class PcmProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = sampleRate === TARGET_RATE ? null : new Resampler(sampleRate);
    this.frame = new Int16Array(FRAME);
    this.filled = 0;
    this.sumSquares = 0;
    this.emit = (sample) => {
      const s = Math.max(-1, Math.min(1, sample));
      this.frame[this.filled++] = Math.round(s * 32767);
      this.sumSquares += s * s;
      if (this.filled === FRAME) this.flush();
    };
  }

  flush() {
    const rms = Math.sqrt(this.sumSquares / FRAME);
    this.port.postMessage({ pcm: this.frame.buffer, rms }, [this.frame.buffer]);
    this.frame = new Int16Array(FRAME);
    this.filled = 0;
    this.sumSquares = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels?.length) return true; // not connected yet
    let mono = channels[0];
    if (channels.length > 1) {
      mono = new Float32Array(mono.length);
      for (const channel of channels) for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / channels.length;
    }
    if (this.resampler) this.resampler.push(mono, this.emit);
    else mono.forEach(this.emit);
    return true;
  }
}

registerProcessor("pcm-16k", PcmProcessor);

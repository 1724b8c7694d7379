"""Lossless compression with a trained BFN: the n-step loss as a real code (paper secs. 3-6).

A sender who knows the data transmits n noisy samples of it; a receiver who runs the network codes
each with its own prediction. Bits-back coding with ANS (Townsend, Bird & Barber 2019) turns that
thought experiment into a file whose length is the n-step loss plus small, measured overheads.

- :mod:`.schedule`   the running sums of the sender samples as a random walk on fine lattices,
                     its data-free bridge, and the receiver's steps (Bit-Swap order);
- :mod:`.coder`      the entropy-coding primitives over constriction's ANS stack: quantised
                     Gaussians, categoricals, and mixtures coded with bits back on the component;
- :mod:`.bitsback`   one batch of chunks encoded and decoded, step by step;
- :mod:`.stream`     many batches chained on one stack, the initial bits, the words of the file;
- :mod:`.container`  the .bfnz file: header (checkpoint, steps, data checksum ...) and payload;
- :mod:`.inputs`     what can be compressed (text, images, tensor files) as chunks, and back.
"""

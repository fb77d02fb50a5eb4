"""Real data for benchmarks: readers of the Debian-packaged sources and the `mmeb-mini` builder.

`sources` reads openclipart, Fashion-MNIST, WordNet and the DejaVu fonts from their Debian packages;
`mini` builds `mmeb-mini`, a small benchmark in MMEB-V2 formats, deterministically from them;
`render` draws the derived pictures (fitted clip art, 2×2 composites, frame clips, document pages).
"""

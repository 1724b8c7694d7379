"""Examples per second that the example sets deliver, at the presets' batch sizes, on in-memory data
of the real sizes (synthetic contents: the data layer's speed does not depend on them)."""

import time

import torch

from bfncli.data.examples import BinaryImages, DiscretizedImages, TextWindows


def rate(examples, batch, seconds=1.0):
    g = torch.Generator().manual_seed(0)
    n, count, start = len(examples), 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        examples.batch(torch.randint(0, n, (batch,), generator=g), g)
        count += batch
    return count / (time.perf_counter() - start)


def main():
    torch.set_num_threads(1)  # what one training process's data loading gets, at worst
    g = torch.Generator().manual_seed(0)
    mnist = BinaryImages(torch.randint(0, 256, (60000, 28, 28), generator=g, dtype=torch.uint8))
    cifar = DiscretizedImages(torch.randint(0, 256, (50000, 32, 32, 3), generator=g, dtype=torch.uint8), 256,
                              flip=True)
    text8 = TextWindows(torch.randint(0, 27, (90_000_000,), generator=g, dtype=torch.uint8), 256)
    for name, examples, batch in (("mnist", mnist, 512), ("cifar10", cifar, 32), ("text8", text8, 416),
                                  ("text8 (8 GPUs)", text8, 3328)):
        print(f"{name:16} batch {batch:5}: {rate(examples, batch):12,.0f} examples/s")


if __name__ == "__main__":
    main()

"""Low-rank compression of matrices and images (stored size, compression ratio) and PSNR."""

from jmf._src.compress import Compressed, compress, psnr, stored_size

__all__ = ["compress", "psnr", "stored_size", "Compressed"]

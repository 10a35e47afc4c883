"""The runtime: kernels per node (ops), the exchange (the only module that touches MPI), the engines."""

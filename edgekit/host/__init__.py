"""This host as a place to compute: CPU instruction sets, the CPUs this process may use (affinity,
cgroup quota), how llama.cpp's threads wait and share them, and other edgekit processes on it.

A floor below the engines and the device report, so both can ask (it imports only ``errors``)."""

"""The modelled device: a stand-in for a GPU that costs each network call by a cost model instead of running it.

Everything it produces is *modelled*, never measured: results carry `modelled: true` and are labelled so wherever
they are shown. `profiles` holds the GPU data (with sources), `cost` turns a call's FLOPs into device time, and a
calibration file written by `benchmarks/gpu_check.py` on a real GPU replaces the assumed efficiencies.
"""

"""The plan: tile geometry, the tilings (coedge, grid, nptp), the Plan value, its steps and the cost model."""

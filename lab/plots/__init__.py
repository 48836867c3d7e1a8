"""Pictures, written once for both sides: sample grids and scatters, loss and schedule curves, sampling
trajectories, the forward process. Each function writes one file of a stated pixel size and returns its
path; every picture says in its title or captions what it shows."""
from .common import (BANNER_PX, DPI, GRID_PAD, MIN_IMAGE_PX, PANEL_PX, SCATTER_PX, grid_array,  # noqa: F401
                     upscale_factor, with_banner)
from .curves import loss_curve, schedule_plot, smooth_in_steps  # noqa: F401
from .forward import SAMPLE_IMAGE, forward_process_figure, forward_timesteps, sample_image  # noqa: F401
from .samples import image_grid, recipes_figure, sample_table, scatter_2d  # noqa: F401
from .trajectories import FINAL, column_label, frame_label, trajectory_gif, trajectory_strip  # noqa: F401

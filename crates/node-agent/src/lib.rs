//! The program on a device node (seed 000/002): connects to the hub, signs
//! its frames, runs commands on devices through a driver, reports results.

//! Disks that could be targets, from sysfs and mountinfo (no udev).

//! User filters: parsed from the command line, split into what the kernel can apply and what
//! userspace must.

//! The agent's CPU scheduling: its wake-ups must not cut into the app's answer.
//!
//! The agent wakes for each piece of an answer the app writes (its access-log line, the
//! head, the body). Under the default policy each of those wake-ups preempts the app
//! halfway through, and on the VM's one vCPU under emulation every switch between the
//! two processes costs guest CPU (a new address space: QEMU's software TLB is flushed).
//! As `SCHED_BATCH` the agent waits until the app has written its whole answer and gone
//! back to waiting, then reads it all in one go. The app keeps the default policy.

use std::io;

/// Makes the calling thread, and the threads it creates later, `SCHED_BATCH`.
pub fn batch_this_thread() -> io::Result<()> {
    set_policy(libc::SCHED_BATCH)
}

/// Puts the calling thread back under the default policy: for the app, between fork and
/// exec (the policy is inherited). Only a system call, so safe in a forked child.
pub fn default_policy() -> io::Result<()> {
    set_policy(libc::SCHED_OTHER)
}

fn set_policy(policy: libc::c_int) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the duration of the call; pid 0 is the
    // calling thread.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> libc::c_int {
        // SAFETY: no arguments but the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn batch_then_default_on_a_thread_of_its_own() {
        // A thread of its own: the test harness's other threads keep their policy.
        std::thread::spawn(|| {
            batch_this_thread().expect("SCHED_BATCH needs no privilege");
            assert_eq!(policy(), libc::SCHED_BATCH);
            // Inherited by the threads it creates.
            assert_eq!(
                std::thread::spawn(policy).join().unwrap(),
                libc::SCHED_BATCH
            );
            default_policy().expect("back to the default policy");
            assert_eq!(policy(), libc::SCHED_OTHER);
        })
        .join()
        .unwrap();
    }
}

/* av_policy.c - not written yet (skeleton commit). */
typedef int av_policy_not_written_yet;

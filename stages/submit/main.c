/*
 * rampart-submit main: hand the stage's parameters to the server skeleton.
 */
#include "mail/stage.h"

extern const struct stage_def submit_stage;

int main(int argc, char **argv)
{
	return stage_main(&submit_stage, argc, argv);
}
